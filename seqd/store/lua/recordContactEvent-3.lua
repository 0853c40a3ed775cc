--[[ Record a contact event (POST /v1/contacts/{id}/events, its batch, the intake stream)
  and complete the contact's live enrollments whose sequence has it as a goal (`exit_on`,
  seqd/goals.py), all at once in the contact's shard.

  Once per event id: the first call keeps what it did under k_contact_event(tag, contact,
  event id) for `retention` ms and a repeat answers that, writing nothing. The caller
  decides which sequences the event is a goal of, from the documents of the sequences the
  contact is live in; a live enrollment in a sequence not passed (enrolled meanwhile) or a
  mirror at another version than the one read answers STALE, and the caller reads again.

  KEYS[1] heads      ZSET   the shard's sequence heads
  KEYS[2] outbox     STREAM the shard's events
  KEYS[3] mirrors    HASH   the shard's sequence mirror
  ARGV[1] tag
  ARGV[2] now            ms
  ARGV[3] tenant
  ARGV[4] contact_id
  ARGV[5] event_id
  ARGV[6] event          JSON object text, not empty, without `completed`: the
                         `contact.event_recorded` data (id, contact_id, name, properties,
                         occurred_at, recorded_at); `completed` is added
  ARGV[7] retention      ms the event id is remembered
  ARGV[8..] per sequence, 3 values: sequence_id, version (-1: its document is gone), goal
            (the event's name when it meets one of the sequence's exit_on rules, else "")

  Returns {repeated (0|1), JSON text of what the first call recorded: the event's data
  with `completed` (the enrollment ids the goal completed)}.
  Errors: NOT_FOUND (no such contact of the tenant), STALE:<sequence_id>
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, tenant, cid, event_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retention = ARGV[7]
-- @include enrollment
-- @include lifecycle

if rcall('HGET', k_contact(tag, cid), 'tenant') ~= tenant then
  return redis.error_reply('NOT_FOUND')
end
local seen_key = k_contact_event(tag, cid, event_id)
local seen = rcall('GET', seen_key)
if seen then return {1, seen} end

-- sequence id -> the goal the event meets in it ("" for none)
local goals = {}
for j = 8, #ARGV, 3 do
  local sid, version = ARGV[j], tonumber(ARGV[j + 1])
  local current = mirror_version(sid)
  if version >= 0 and current and current ~= version then
    return redis.error_reply('STALE:' .. sid)
  end
  goals[sid] = ARGV[j + 2]
end
local targets = {}
for id, sid in pairs(live_enrollments(cid)) do
  if not goals[sid] then return redis.error_reply('STALE:' .. sid) end
  if goals[sid] ~= '' then targets[#targets + 1] = id end
end
table.sort(targets)

local completed = {}
for _, id in ipairs(targets) do
  local ekey = k_enrollment(tag, id)
  local e = to_table(rcall('HGETALL', ekey))
  if e['t'] == tenant and (e['st'] == 'active' or e['st'] == 'paused') then
    local goal = goals[e['s']]
    rcall('HSET', ekey, 'cq', 'goal', 'gl', goal)
    e['cq'], e['gl'] = 'goal', goal
    finish(id, e, 'completed', '', now, {completed_reason = 'goal', goal = goal})
    completed[#completed + 1] = id
  end
end

-- The event's text is kept as given (a decode and encode would round its numbers), with
-- the list spelled out (cjson encodes an empty table as {}).
local text = string.sub(ARGV[6], 1, -2) .. ',"completed":'
  .. (#completed > 0 and cjson.encode(completed) or '[]') .. '}'
rcall('XADD', outbox_key, '*', 'type', 'contact.event_recorded', 'tenant', tenant, 'at', now,
  'data', text)
rcall('SET', seen_key, text, 'PX', retention)
return {0, text}
