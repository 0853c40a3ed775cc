--[[ Pause, resume, cancel or complete one enrollment.

  Resume puts it due at max(next_run_at, now). Every action changes or removes the
  member's score in its queue, so a claim in flight loses its lease and its advance is
  stale (advance-2.lua).

  KEYS[1] heads   ZSET   the shard's sequence heads
  KEYS[2] outbox  STREAM the shard's events
  ARGV[1] tag
  ARGV[2] now      ms
  ARGV[3] tenant   the caller's tenant: another tenant's enrollment is NOT_FOUND
  ARGV[4] enrollment_id
  ARGV[5] action   pause | resume | cancel | complete
  ARGV[6] reason   paused_reason / cancel_reason ("" for resume and complete)

  Returns the enrollment hash (flat) after the change.
  Errors: NOT_FOUND; INVALID_TRANSITION:<current status>
]]
local rcall = redis.call
local heads_key, outbox_key = KEYS[1], KEYS[2]
local tag, now, tenant, id, action, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
-- @include enrollment

local ekey = k_enrollment(tag, id)
local e = to_table(rcall('HGETALL', ekey))
if e['t'] ~= tenant then return redis.error_reply('NOT_FOUND') end

if action == 'resume' then
  if e['st'] ~= 'paused' then return redis.error_reply('INVALID_TRANSITION:' .. e['st']) end
  resume(id, e, now, nil)
else
  local target = ({pause = 'paused', cancel = 'cancelled', complete = 'completed'})[action]
  if not target then return redis.error_reply('BAD_ACTION:' .. action) end
  local current = finish(id, e, target, reason, now)
  if current then return redis.error_reply('INVALID_TRANSITION:' .. current) end
end
return rcall('HGETALL', ekey)
