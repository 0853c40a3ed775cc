--[[ Record the outcome of one claimed webhook delivery.

  KEYS[1] due      ZSET endpoint id -> earliest due delivery of the shard
  KEYS[2] failed   ZSET every failed delivery of the shard (age trimming)
  ARGV[1] tag
  ARGV[2] now          ms
  ARGV[3] delivery_id
  ARGV[4] token        from the claim; a stale one changes nothing
  ARGV[5] outcome      delivered | retry | failed | drop
  ARGV[6] due_at       retry: when the next attempt is due (ms)
  ARGV[7] attempted    1 when a request was made (counted in `a`), 0 when none was
  ARGV[8] status       the receiver's HTTP status, "" for none
  ARGV[9] error        "" for none
  ARGV[10] lease_ms    "" or 0: nothing more; else, after a delivered outcome, claim the
                       endpoint's next due delivery in this shard for the same worker
                       (its slot goes on without a round trip through the claim loop)

  delivered and drop delete the delivery; retry puts it back in its endpoint's queue;
  failed moves it to the endpoint's failed (dead-letter) list.
  Returns {1} or {1, {delivery_id, token, flat hash}} (the next one claimed), or {0} when
  the token is stale or the delivery is gone.
  Errors: BAD_OUTCOME:<outcome>
]]
local rcall = redis.call
local due_key, failed_key = KEYS[1], KEYS[2]
local tag, now, id, token, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local due_at, attempted, status, err = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local lease = tonumber(ARGV[10]) or 0
-- @include webhooks

local OUTCOMES = {delivered = true, retry = true, failed = true, drop = true}
if not OUTCOMES[outcome] then return redis.error_reply('BAD_OUTCOME:' .. outcome) end

local dkey = k_delivery(tag, id)
local endpoint, current = unpack(rcall('HMGET', dkey, 'w', 'k'))
if not endpoint or current ~= token then return {0} end
local queue = k_delivery_queue(tag, endpoint)

if outcome == 'delivered' or outcome == 'drop' then
  rcall('ZREM', queue, id)
  rcall('DEL', dkey)
else
  if attempted == '1' then
    rcall('HINCRBY', dkey, 'a', 1)
    rcall('HSET', dkey, 'la', now)
  end
  if status ~= '' then rcall('HSET', dkey, 'lc', status) else rcall('HDEL', dkey, 'lc') end
  if err ~= '' then rcall('HSET', dkey, 'le', err) else rcall('HDEL', dkey, 'le') end
end
if outcome == 'retry' then
  rcall('HSET', dkey, 'n', due_at)
  rcall('ZADD', queue, due_at, id)
elseif outcome == 'failed' then
  rcall('ZREM', queue, id)
  rcall('HSET', dkey, 'st', 'failed', 'fa', now)
  rcall('HDEL', dkey, 'n')
  rcall('ZADD', k_failed_deliveries(tag, endpoint), 0, id)
  rcall('ZADD', failed_key, 0, id)
end
local out = {1}
if lease > 0 and outcome == 'delivered' then
  local n = tonumber(now)
  for _, nid in ipairs(rcall('ZRANGEBYSCORE', queue, '-inf', n, 'LIMIT', 0, 1)) do
    out[2] = claim_one(queue, nid, n, lease)
  end
end
refresh_endpoint(endpoint)
return out
