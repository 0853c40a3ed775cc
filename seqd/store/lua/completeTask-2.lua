--[[ Complete a task (of a task step), and let the enrollment it holds go on.

  An open task becomes completed (with its outcome) and `task.completed` is emitted. The
  enrollment a blocking task holds (paused awaiting_task on the task's step) becomes active
  again, due now: its task step is claimed again and, the task being completed, passed on
  to the next step (includes/tasks.lua); so does one resumed by hand meanwhile (active on
  the task step, due at the task's due time). Completing a completed task changes nothing
  but that release, so a retry after a crash finishes the work.

  KEYS[1] heads   ZSET   the shard's sequence heads
  KEYS[2] outbox  STREAM the shard's events
  ARGV[1] tag
  ARGV[2] now      ms
  ARGV[3] tenant   the caller's tenant: another tenant's task is NOT_FOUND
  ARGV[4] task_id
  ARGV[5] outcome  "" for none

  Returns the task hash (flat) after the change.
  Errors: NOT_FOUND; INVALID_TRANSITION:<status> (a task that timed out)
]]
local rcall = redis.call
local heads_key, outbox_key = KEYS[1], KEYS[2]
local tag, now, tenant, tid, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- @include enrollment
-- @include tasks

local tkey = k_task(tag, tid)
local t = to_table(rcall('HGETALL', tkey))
if t['t'] ~= tenant then return redis.error_reply('NOT_FOUND') end
if t['st'] == 'timed_out' then return redis.error_reply('INVALID_TRANSITION:timed_out') end
if t['st'] == 'open' then
  if outcome ~= '' then rcall('HSET', tkey, 'o', outcome); t['o'] = outcome end
  task_finish(tid, t, 'completed', now, 'task.completed')
end
local id = t['e']
local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
local holds = t['b'] == '1' and e['i'] == t['i'] and e['p' .. t['i']] == tid
if holds and e['st'] == 'paused' and e['pr'] == 'awaiting_task' then
  rcall('HSET', k_enrollment(tag, id), 'n', now); e['n'] = now
  resume(id, e, now, {task_id = tid})
elseif holds and e['st'] == 'active' then
  -- Resumed by hand while its task was open: its task step waits for the task's due time,
  -- and is due now instead.
  rcall('HSET', k_enrollment(tag, id), 'n', now)
  schedule(id, e['s'], now)
end
return rcall('HGETALL', tkey)
