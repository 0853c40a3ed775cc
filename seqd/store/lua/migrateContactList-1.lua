--[[ Schema 2 -> 3, one bounded step for one tenant's contact listing in one shard: its
  members become contact ids without their prefix ("con_"), as createContacts writes them.
  Safe to run from several processes at once and again after a crash: each step moves
  what is left.

  KEYS[1] tenant_contacts  ZSET  the listing (scores all 0)
  ARGV[1] limit            members moved at most

  Returns {done (0|1), members moved}
]]
local rcall = redis.call
local listing, limit = KEYS[1], tonumber(ARGV[1])
-- Whole ids sort together ("con_" and its bodies' alphabet, 0-9A-Z, do not overlap).
local old = rcall('ZRANGEBYLEX', listing, '[con_', '(con`', 'LIMIT', 0, limit)
if #old == 0 then return {1, 0} end
local bodies = {}
for _, cid in ipairs(old) do
  bodies[#bodies + 1] = 0
  bodies[#bodies + 1] = string.sub(cid, 5)
end
rcall('ZREM', listing, unpack(old))
rcall('ZADD', listing, unpack(bodies))
return {#old < limit and 1 or 0, #old}
