-- Shared by the webhook delivery scripts. Expects: rcall, tag (the shard's hash tag),
-- due_key (the shard's endpoint -> earliest due ZSET) and the generated k_* helpers.
-- @include heads

-- Keep the endpoint's score in the due index equal to the earliest score of its queue.
local function refresh_endpoint(endpoint)
  set_head(due_key, endpoint, k_delivery_queue(tag, endpoint))
end

-- Claim delivery `id` of `queue`: its score moves to the end of the lease and its fencing
-- token is bumped. Returns {id, token, flat hash}, or nil (and drops it) when it is gone.
local function claim_one(queue, id, now, lease)
  local dkey = k_delivery(tag, id)
  if rcall('EXISTS', dkey) == 0 then
    rcall('ZREM', queue, id)
    return nil
  end
  rcall('ZADD', queue, now + lease, id)
  local token = rcall('HINCRBY', dkey, 'k', 1)
  return {id, token, rcall('HGETALL', dkey)}
end
