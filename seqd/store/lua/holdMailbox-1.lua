--[[ Take, keep or give up the lease of an IMAP mailbox: one reader process at a time.

  KEYS[1] lease   STRING  owner id, with a TTL
  ARGV[1] owner   the reader's id (process and mailbox)
  ARGV[2] ttl     ms; 0 gives the lease up (when held by owner)

  Returns 1 when owner holds the lease now (or gave it up), 0 when another does.
]]
local rcall = redis.call
local lease = KEYS[1]
local owner, ttl = ARGV[1], tonumber(ARGV[2])

local holder = rcall('GET', lease)
if holder and holder ~= owner then
  return 0
end
if ttl == 0 then
  if holder then
    rcall('DEL', lease)
  end
  return 1
end
rcall('SET', lease, owner, 'PX', ttl)
return 1
