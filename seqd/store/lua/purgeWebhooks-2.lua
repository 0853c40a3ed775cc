--[[ Delete a deleted endpoint's deliveries in one shard, pending and failed, in batches.

  KEYS[1] due     ZSET endpoint id -> earliest due delivery of the shard
  KEYS[2] failed  ZSET every failed delivery of the shard
  ARGV[1] tag
  ARGV[2] endpoint_id
  ARGV[3] limit   deliveries of each kind deleted by this call at most

  Returns how many deliveries of the endpoint are left in the shard (call again until 0).
]]
local rcall = redis.call
local due_key, failed_key = KEYS[1], KEYS[2]
local tag, endpoint, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- @include webhooks

local queue = k_delivery_queue(tag, endpoint)
local failed = k_failed_deliveries(tag, endpoint)
for _, id in ipairs(rcall('ZRANGE', queue, 0, limit - 1)) do
  rcall('DEL', k_delivery(tag, id))
  rcall('ZREM', queue, id)
end
for _, id in ipairs(rcall('ZRANGE', failed, 0, limit - 1)) do
  rcall('DEL', k_delivery(tag, id))
  rcall('ZREM', failed, id)
  rcall('ZREM', failed_key, id)
end
refresh_endpoint(endpoint)
return rcall('ZCARD', queue) + rcall('ZCARD', failed)
