--[[ Record a click on a tracked link (seqd/clicks.py): its event, and the step's `clicked`
  counter on the first click of a person (not a suspected scanner) on any link of the step.

  Stored in the enrollment hash as `k<step>` = ms of that first click, so the counter counts
  contacts who clicked, whatever their clicks after it; every click has its event.

  KEYS[1] outbox  STREAM
  ARGV[1] tag
  ARGV[2] now            ms
  ARGV[3] enrollment_id
  ARGV[4] step
  ARGV[5] suspected_bot  1 | 0
  ARGV[6] event_data     JSON object; enrollment, contact, sequence, step and `first` added

  Returns {recorded (0: no such enrollment), first (1: counted)}
]]
local rcall = redis.call
local outbox_key = KEYS[1]
local tag, now, id, step, bot = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
-- @include enrollment

local ekey = k_enrollment(tag, id)
local t, seq, cid, variant, sender =
  unpack(rcall('HMGET', ekey, 't', 's', 'c', 'v' .. step, 'r' .. step))
if not t then return {0, 0} end
local first = 0
if not bot and rcall('HSETNX', ekey, 'k' .. step, now) == 1 then
  first = 1
  stats_count(seq, step, variant or NO_VARIANT, 'clicked', now)
  stats_count_sender(seq, sender, 'clicked', now)
end
local data = cjson.decode(ARGV[6])
data['first'] = first == 1
emit_message('message.clicked', t, now, data, id, cid, seq, step)
return {1, first}
