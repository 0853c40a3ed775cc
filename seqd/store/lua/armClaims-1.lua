--[[ Arm reserved claims for sending: each member whose score in its queue is still the
  reservation `token` (claimDue in reserve mode) is leased now (enrollment.lua
  `lease_token`, now + lease - 0.5 ms), the score of a send that may have started: from
  here a worker that dies leaves the step to come back as an unsettled claim (resent with
  an attempt counted, or held). A member whose score changed meanwhile (paused, cancelled,
  claimed again after the reservation ran out) is not armed and must not be sent.

  KEYS[1] heads   ZSET   the shard's sequence heads (its slot; not written)
  ARGV[1] tag
  ARGV[2] now     ms
  ARGV[3] lease   ms
  ARGV[4] token   the reservation's
  ARGV[5] JSON {sequence id: [enrollment id, ...]}

  Returns {lease token, {id not armed, ...}}.
  Errors: BAD_ITEMS:<which>
]]
local rcall = redis.call
local heads_key, outbox_key = KEYS[1], nil
local tag, now, lease, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
-- @include enrollment
-- @include dispatch

local ok, queues = pcall(cjson.decode, ARGV[5])
if not ok or type(queues) ~= 'table' then
  return redis.error_reply('BAD_ITEMS:not a JSON object')
end
for seq, members in pairs(queues) do
  if type(seq) ~= 'string' or type(members) ~= 'table' then
    return redis.error_reply('BAD_ITEMS:sequence ' .. tostring(seq))
  end
  for _, id in ipairs(members) do
    if type(id) ~= 'string' then return redis.error_reply('BAD_ITEMS:member of ' .. seq) end
  end
end

local leased = lease_token(now + lease)
local missed = {}
for seq, members in pairs(queues) do
  local qkey = k_queue(tag, seq)
  local args = {}
  for i = 1, #members, BULK do  -- (none: no call)
    local chunk = {unpack(members, i, math.min(i + BULK - 1, #members))}
    local scores = rcall('ZMSCORE', qkey, unpack(chunk))
    for j, id in ipairs(chunk) do
      local score = scores[j]
      if score and (score == token or tonumber(score) == tonumber(token)) then
        args[#args + 1] = leased
        args[#args + 1] = id
      else
        missed[#missed + 1] = id
      end
    end
  end
  zadd_chunked(qkey, args)
end
return {leased, missed}
