--[[ Change a task's title, assignee or due time.

  A new due time of an open blocking task that holds its enrollment is the hold's new end:
  the enrollment's queue member (its timer) moves with it, or leaves the queue when the
  due time is cleared (then only completing the task ends the hold).

  KEYS[1] heads   ZSET   the shard's sequence heads
  KEYS[2] outbox  STREAM the shard's events (not written: no event for an edit)
  ARGV[1] tag
  ARGV[2] now      ms
  ARGV[3] tenant   the caller's tenant: another tenant's task is NOT_FOUND
  ARGV[4] task_id
  ARGV[5] changes  JSON object: title (string), assignee (string or null), due_at (ms or
                   null); an absent key is unchanged

  Returns the task hash (flat) after the change.
  Errors: NOT_FOUND; INVALID_TRANSITION:<status> (a new due time for a task not open);
  BAD_ITEMS:changes
]]
local rcall = redis.call
local heads_key, outbox_key = KEYS[1], KEYS[2]
local tag, now, tenant, tid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- @include enrollment
-- @include tasks

local ok, p = pcall(cjson.decode, ARGV[5])
if not ok or type(p) ~= 'table' then return redis.error_reply('BAD_ITEMS:changes') end
local tkey = k_task(tag, tid)
local t = to_table(rcall('HGETALL', tkey))
if t['t'] ~= tenant then return redis.error_reply('NOT_FOUND') end
if p.due_at ~= nil and t['st'] ~= 'open' then
  return redis.error_reply('INVALID_TRANSITION:' .. t['st'])
end
if type(p.title) == 'string' then rcall('HSET', tkey, 'ti', p.title); t['ti'] = p.title end
if p.assignee ~= nil then
  task_listings('ZREM', t, tid, '')
  task_listings('ZREM', t, tid, t['st'])
  if type(p.assignee) == 'string' then
    rcall('HSET', tkey, 'as', p.assignee); t['as'] = p.assignee
  else
    rcall('HDEL', tkey, 'as'); t['as'] = nil
  end
  task_listings('ZADD', t, tid, '')
  task_listings('ZADD', t, tid, t['st'])
end
if p.due_at ~= nil then
  local due = type(p.due_at) == 'number' and string.format('%d', p.due_at) or nil
  if due then rcall('HSET', tkey, 'd', due) else rcall('HDEL', tkey, 'd') end
  t['d'] = due
  local id = t['e']
  local ekey = k_enrollment(tag, id)
  local e = to_table(rcall('HGETALL', ekey))
  if t['b'] == '1' and e['st'] == 'paused' and e['pr'] == 'awaiting_task'
    and e['p' .. t['i']] == tid then
    if due then
      rcall('HSET', ekey, 'n', due)
      schedule(id, e['s'], due)
    else
      unschedule(id, e)
    end
  end
end
rcall('HSET', tkey, 'ua', now)
return rcall('HGETALL', tkey)
