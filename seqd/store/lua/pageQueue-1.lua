--[[ One page of a sequence's queue in one shard (read only): the listing of its active
  enrollments, in queue order (due time, then id), after a cursor.

  KEYS[1] queue  ZSET enrollment id -> due time or lease token
  ARGV[1] score  the cursor's score as Redis printed it ("" for the first page)
  ARGV[2] id     the cursor's enrollment id
  ARGV[3] limit

  Returns {id, score, ...}: up to `limit` members after (score, id). The cursor's member
  may have moved since (its step went out): the members at its score are then searched by
  rank for the first id after it, in byte order like the ZSET's own (Lua's string `<`
  follows the server's locale).
]]
local rcall = redis.call
local q = KEYS[1]
local score, id, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])

local function after(a, b)  -- a > b, bytewise
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end

local start = 0
if score ~= '' then
  local current = rcall('ZSCORE', q, id)
  if current and tonumber(current) == tonumber(score) then
    start = rcall('ZRANK', q, id) + 1
  else
    -- Ranks [lo, hi) hold the members at `score`, in id order.
    local lo = rcall('ZCOUNT', q, '-inf', '(' .. score)
    local hi = rcall('ZCOUNT', q, '-inf', score)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if after(rcall('ZRANGE', q, mid, mid)[1], id) then hi = mid else lo = mid + 1 end
    end
    start = lo
  end
end
return rcall('ZRANGE', q, start, start + limit - 1, 'WITHSCORES')
