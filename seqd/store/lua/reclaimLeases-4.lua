--[[ Take back the leases of one shard that no worker will settle: those of the workers
  whose heartbeat stopped (`dead`), and those past their end. A lease's members still on
  its token come back due now, with another score (so the token no longer holds: a late
  advance of the old holder is stale):
  - its sends had started (its token is in lease_starts): as an unsettled claim, a lease
    score due now (enrollment.lua `lease_token`), so the next peek applies on_unknown
    (hold: paused delivery_unknown; resend: an attempt counted by leasePeeked);
  - never handed to a channel: due now as a plain step, no attempt counted.

  KEYS[1] heads         ZSET   the shard's sequence heads
  KEYS[2] leases        ZSET   lease token -> its end (keys.py "leases")
  KEYS[3] lease_owners  HASH   lease token -> "<worker> <sequence id>,..."
  KEYS[4] lease_starts  SET    lease tokens whose sends had started
  ARGV[1] tag
  ARGV[2] now    ms
  ARGV[3] limit  leases taken back at most (ended ones; a dead worker's are all taken)
  ARGV[4..] dead worker ids

  Returns {leases taken back, members made due as plain steps, members made due as
  unsettled claims}.
]]
local rcall = redis.call
local heads_key, leases_key, owners_key, starts_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tag, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- (schedule() writes heads_key; nothing here emits an event.)
local outbox_key = nil
-- @include enrollment

local dead = {}
for i = 4, #ARGV do dead[ARGV[i]] = true end

local todo, order = {}, {}
local function add(token)
  if not todo[token] then
    todo[token] = true
    order[#order + 1] = token
  end
end
for _, token in ipairs(rcall('ZRANGEBYSCORE', leases_key, '-inf', '(' .. now, 'LIMIT', 0, limit)) do
  add(token)
end
if next(dead) then
  local all = rcall('HGETALL', owners_key)
  for i = 1, #all, 2 do
    if dead[string.match(all[i + 1], '^(%S+)')] then add(all[i]) end
  end
end

local unsettled = lease_token(tonumber(now))
local plain, unknown = 0, 0
for _, token in ipairs(order) do
  local record = rcall('HGET', owners_key, token)
  local started = rcall('SISMEMBER', starts_key, token) == 1
  if record then
    for seq in string.gmatch(string.match(record, ' (.*)$') or '', '[^,]+') do
      for _, id in ipairs(rcall('ZRANGEBYSCORE', k_queue(tag, seq), token, token)) do
        if started then
          schedule(id, seq, unsettled)
          unknown = unknown + 1
        else
          schedule(id, seq, now)
          plain = plain + 1
        end
      end
    end
  end
  rcall('ZREM', leases_key, token)
  rcall('HDEL', owners_key, token)
  rcall('SREM', starts_key, token)
end
return {#order, plain, unknown}
