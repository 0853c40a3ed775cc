--[[ Claim due webhook deliveries of one shard, endpoint by endpoint.

  Each claimed delivery's score moves to now + lease (a worker that dies loses nothing:
  the delivery is due again when the lease ends) and its fencing token `k` is bumped, so
  only the latest claimer can finish it. An endpoint takes at most its free slots, so a
  slow receiver's backlog stays in Redis instead of crowding out other endpoints.

  KEYS[1] due     ZSET endpoint id -> earliest due delivery of the shard
  ARGV[1] tag
  ARGV[2] now           ms
  ARGV[3] lease_ms
  ARGV[4] max           deliveries to claim at most
  ARGV[5] per_endpoint  slots of an endpoint with nothing in flight here
  ARGV[6..] pairs (endpoint_id, free slots) of endpoints with deliveries in flight here

  Returns per claimed delivery {delivery_id, token, flat hash}.
]]
local rcall = redis.call
local due_key = KEYS[1]
local tag, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local remaining, per_endpoint = tonumber(ARGV[4]), tonumber(ARGV[5])
-- @include webhooks

local free, busy = {}, 0
for i = 6, #ARGV, 2 do
  free[ARGV[i]] = tonumber(ARGV[i + 1])
  busy = busy + 1
end

local out = {}
-- Full endpoints are skipped, so the window is widened by their number.
local endpoints = rcall('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, remaining + busy)
for _, endpoint in ipairs(endpoints) do
  if remaining <= 0 then break end
  local slots = math.min(free[endpoint] or per_endpoint, remaining)
  if slots > 0 then
    local queue = k_delivery_queue(tag, endpoint)
    for _, id in ipairs(rcall('ZRANGEBYSCORE', queue, '-inf', now, 'LIMIT', 0, slots)) do
      local claimed = claim_one(queue, id, now, lease)
      if claimed then
        out[#out + 1] = claimed
        remaining = remaining - 1
      end
    end
    refresh_endpoint(endpoint)
  end
end
return out
