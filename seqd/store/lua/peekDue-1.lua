--[[ What the dispatcher's poll needs of one shard: the earliest score of its queues and how
  many of their members are due (read only).

  The due heads' queues are looked at themselves, so a head left early (its queue's first
  member went) does not count as a due step; the first head not due stands for the rest.
  A head of a paused sequence may still be there until the next claim takes it out: its
  due members count until then (the claim that comes of it finds nothing to send).

  KEYS[1] heads  ZSET  the shard's sequence heads
  ARGV[1] tag
  ARGV[2] now    ms
  ARGV[3] cap    due members counted at most (and due heads looked at)

  Returns {earliest score (text) or false, due members (at most cap)}
]]
local rcall = redis.call
local heads_key = KEYS[1]
local tag, now, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])

local earliest, count = nil, 0
local function consider(score)
  if score and (earliest == nil or tonumber(score) < tonumber(earliest)) then earliest = score end
end
for _, seq in ipairs(rcall('ZRANGEBYSCORE', heads_key, '-inf', now, 'LIMIT', 0, cap)) do
  local qkey = k_queue(tag, seq)
  consider(rcall('ZRANGE', qkey, 0, 0, 'WITHSCORES')[2])
  if count < cap then count = count + rcall('ZCOUNT', qkey, '-inf', now) end
end
consider(rcall('ZRANGEBYSCORE', heads_key, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2])
return {earliest or false, math.min(count, cap)}
