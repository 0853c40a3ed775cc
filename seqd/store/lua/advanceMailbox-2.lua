--[[ Record that a folder's messages up to a UID are applied, by the lease holder only.

  KEYS[1] lease        STRING  owner id (holdMailbox-1.lua)
  KEYS[2] cursor       HASH    folder -> "<uidvalidity>:<uid>"
  ARGV[1] owner        the reader's id
  ARGV[2] folder
  ARGV[3] uidvalidity  of the folder as selected
  ARGV[4] uid          the last UID applied (0: a new UIDVALIDITY, nothing applied yet)

  The cursor never moves back within one UIDVALIDITY; a new UIDVALIDITY replaces it.
  Returns 1 when recorded, 0 when the lease is not owner's (the message is another
  reader's now: this one must stop).
]]
local rcall = redis.call
local lease, cursor = KEYS[1], KEYS[2]
local owner, folder = ARGV[1], ARGV[2]
local validity, uid = ARGV[3], tonumber(ARGV[4])

if rcall('GET', lease) ~= owner then
  return 0
end
local stored = rcall('HGET', cursor, folder)
if stored then
  local sep = string.find(stored, ':', 1, true)
  if string.sub(stored, 1, sep - 1) == validity and tonumber(string.sub(stored, sep + 1)) >= uid then
    return 1
  end
end
rcall('HSET', cursor, folder, validity .. ':' .. uid)
return 1
