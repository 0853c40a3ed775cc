-- A heads ZSET holds, per member (a sequence of the shard, a webhook endpoint), the first
-- score of that member's queue, so a poll or a claim reads one ZSET instead of every queue.
-- Expects: rcall.

-- Set `member`'s head in `heads` to the first score of `queue`, or take it out with the
-- queue empty.
local function set_head(heads, member, queue)
  local first = rcall('ZRANGE', queue, 0, 0, 'WITHSCORES')
  if first[2] then rcall('ZADD', heads, first[2], member) else rcall('ZREM', heads, member) end
end
