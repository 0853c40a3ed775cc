--[[ Record the outcomes of claimed webhook deliveries of one shard.

  KEYS[1] due      ZSET endpoint id -> earliest due delivery of the shard
  KEYS[2] failed   ZSET every failed delivery of the shard (age trimming)
  ARGV[1] tag
  ARGV[2..] per delivery, 9 values:
    now          ms
    delivery_id
    token        from the claim; a stale one changes nothing
    outcome      delivered | retry | failed | drop
    due_at       retry: when the next attempt is due (ms)
    attempted    1 when a request was made (counted in `a`), 0 when none was
    status       the receiver's HTTP status, "" for none
    error        "" for none
    lease_ms     "" or 0: nothing more; else, after a delivered outcome, claim the
                 endpoint's next due delivery in this shard for the same worker
                 (its slot goes on without a round trip through the claim loop)

  delivered and drop delete the delivery; retry puts it back in its endpoint's queue;
  failed moves it to the endpoint's failed (dead-letter) list. The deliverer sends every
  outcome that is ready in one call, so a busy endpoint costs a round trip per batch of
  answers, not per answer.
  Returns per delivery, in order, {1} or {1, {delivery_id, token, flat hash}} (the next
  one claimed), or {0} when the token is stale or the delivery is gone.
  Errors: BAD_OUTCOME:<outcome> (nothing is recorded)
]]
local rcall = redis.call
local due_key, failed_key = KEYS[1], KEYS[2]
local tag = ARGV[1]
local WIDTH = 9
-- @include webhooks

local OUTCOMES = {delivered = true, retry = true, failed = true, drop = true}
for i = 2, #ARGV, WIDTH do
  local outcome = ARGV[i + 3]
  if not OUTCOMES[outcome] then return redis.error_reply('BAD_OUTCOME:' .. outcome) end
end

local function finish(now, id, token, outcome, due_at, attempted, status, err, lease)
  local dkey = k_delivery(tag, id)
  local endpoint, current = unpack(rcall('HMGET', dkey, 'w', 'k'))
  if not endpoint or current ~= token then return {0}, nil end
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
  return out, endpoint
end

local replies, touched = {}, {}
for i = 2, #ARGV, WIDTH do
  local reply, endpoint = finish(
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6],
    ARGV[i + 7], tonumber(ARGV[i + 8]) or 0)
  replies[#replies + 1] = reply
  if endpoint then touched[endpoint] = true end
end
-- Each endpoint's head once, after all its outcomes (and chained claims) are in.
for endpoint in pairs(touched) do refresh_endpoint(endpoint) end
return replies
