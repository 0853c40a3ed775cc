--[[ Send a failed (dead-lettered) delivery again: back in its endpoint's queue, due now,
  with a fresh retry schedule.

  KEYS[1] due     ZSET endpoint id -> earliest due delivery of the shard
  KEYS[2] failed  ZSET every failed delivery of the shard
  ARGV[1] tag
  ARGV[2] now          ms
  ARGV[3] tenant       the caller's: another tenant's delivery is NOT_FOUND
  ARGV[4] endpoint_id  the endpoint in the URL: another endpoint's delivery is NOT_FOUND
  ARGV[5] delivery_id

  Returns the delivery hash (flat) after the change.
  Errors: NOT_FOUND; NOT_FAILED:<status>
]]
local rcall = redis.call
local due_key, failed_key = KEYS[1], KEYS[2]
local tag, now, tenant, endpoint, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- @include webhooks

local dkey = k_delivery(tag, id)
local t, w, st = unpack(rcall('HMGET', dkey, 't', 'w', 'st'))
if t ~= tenant or w ~= endpoint then return redis.error_reply('NOT_FOUND') end
if st ~= 'failed' then return redis.error_reply('NOT_FAILED:' .. st) end
rcall('ZREM', k_failed_deliveries(tag, endpoint), id)
rcall('ZREM', failed_key, id)
rcall('HSET', dkey, 'st', 'pending', 'a', 0, 'n', now)
rcall('HDEL', dkey, 'fa')
rcall('HINCRBY', dkey, 'k', 1)
rcall('ZADD', k_delivery_queue(tag, endpoint), now, id)
refresh_endpoint(endpoint)
return rcall('HGETALL', dkey)
