--[[ Point a tenant's lookup indexes at new contacts, a batch at a time: linkContact for
  each, in order, so a later contact of the batch conflicts with an earlier one that took
  its value.

  KEYS[1] phone        HASH value -> contact id
  KEYS[2] email        HASH
  KEYS[3] external_id  HASH
  ARGV[1..] contacts, 4 values each: contact_id, phone, email, external_id ("" none)

  Returns one reply per contact: {} linked, or {field, existing_contact_id} of its first
  conflict (then none of its values were linked).
]]
local rcall = redis.call
-- @include contacts

local out, none = {}, {'', '', ''}
for i = 1, #ARGV, 4 do
  out[#out + 1] = link_contact(ARGV[i], '  ', {ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]}, none)
end
return out
