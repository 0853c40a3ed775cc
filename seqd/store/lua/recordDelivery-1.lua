--[[ Record a provider's delivery status of one sent step (Twilio status callbacks).

  Callbacks may come twice or out of order: a status is stored only when its rank is
  higher than the stored one's, so a final status (delivered, undelivered, failed) is
  never replaced by an earlier one (queued, sending, sent) nor by another final one.
  Stored in the enrollment hash as `d<step>` = "<rank>:<status>[:<error_code>]".

  KEYS[1] outbox  STREAM
  ARGV[1] tag
  ARGV[2] now            ms
  ARGV[3] tenant         the tenant whose signature verified
  ARGV[4] enrollment_id
  ARGV[5] step
  ARGV[6] status
  ARGV[7] rank           of the status (caller's table)
  ARGV[8] error_code     "" for none
  ARGV[9] event_type     written when the status is recorded; "" for none
  ARGV[10] event_data    JSON object; enrollment, contact, sequence and step are added
  ARGV[11] outcome       the step's letter in `o` the status writes (step conditions,
                         seqd/conditions.py OUTCOME_LETTER); "" for none

  Returns {recorded (0|1), previous status ("" for none)}
  Errors: NOT_FOUND
]]
local rcall = redis.call
local outbox_key = KEYS[1]
local tag, now, tenant, id, step = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local status, rank, code, etype = ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9]
-- @include enrollment

local DELIVERY_COUNTER = {['message.delivered'] = 'delivered',
                          ['message.undelivered'] = 'undelivered'}

local ekey = k_enrollment(tag, id)
local t, seq, cid, variant, sender =
  unpack(rcall('HMGET', ekey, 't', 's', 'c', 'v' .. step, 'r' .. step))
if t ~= tenant then return redis.error_reply('NOT_FOUND') end
local field = 'd' .. step
local stored = rcall('HGET', ekey, field) or ''
local old_rank = tonumber(string.match(stored, '^(%d+):')) or -1
local previous = string.match(stored, '^%d+:([^:]+)') or ''
if rank <= old_rank then return {0, previous} end
local value = rank .. ':' .. status
if code ~= '' then value = value .. ':' .. code end
rcall('HSET', ekey, field, value)
-- A final status counts once: no later status outranks it.
local counter = DELIVERY_COUNTER[etype]
if counter then
  stats_count(seq, step, variant or NO_VARIANT, counter, now)
  stats_count_sender(seq, sender, counter, now)
end
if ARGV[11] ~= '' then
  local at = fact_index(ekey, step)
  if at then set_outcome(ekey, at, ARGV[11]) end
end
if etype ~= '' then
  emit_message(etype, tenant, now, cjson.decode(ARGV[10]), id, cid, seq, step)
end
return {1, previous}
