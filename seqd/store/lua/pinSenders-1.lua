--[[ Pin enrollments to the sender their sticky rotation took (seqd/engine/budgets.py): the
  contact keeps it for the later steps of that kind.

  KEYS[1] heads     the shard's heads: names the shard's slot, not read or written
  ARGV[1] tag       the shard's hash tag
  ARGV[2..]         triples: enrollment id, field (kinds.py `sender_field`), sender id

  An enrollment whose hash is gone (its contact deleted meanwhile) is left gone.
  Returns the number pinned.
]]
local rcall = redis.call
local tag = ARGV[1]
local pinned = 0
for i = 2, #ARGV, 3 do
  local ekey = k_enrollment(tag, ARGV[i])
  if rcall('EXISTS', ekey) == 1 then
    rcall('HSET', ekey, ARGV[i + 1], ARGV[i + 2])
    pinned = pinned + 1
  end
end
return pinned
