--[[ Delete failed deliveries past their retention in one shard, in batches.

  Delivery ids begin with their event's time, so "older than" is a lexical range.

  KEYS[1] failed  ZSET every failed delivery of the shard, scores 0
  ARGV[1] tag
  ARGV[2] before  delivery ids lexically below this one are past retention
  ARGV[3] limit   deliveries deleted by this call at most

  Returns the number deleted.
]]
local rcall = redis.call
local failed_key = KEYS[1]
local tag, before, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])

local old = rcall('ZRANGEBYLEX', failed_key, '-', '(' .. before, 'LIMIT', 0, limit)
for _, id in ipairs(old) do
  local dkey = k_delivery(tag, id)
  local endpoint = rcall('HGET', dkey, 'w')
  if endpoint then rcall('ZREM', k_failed_deliveries(tag, endpoint), id) end
  rcall('DEL', dkey)
  rcall('ZREM', failed_key, id)
end
return #old
