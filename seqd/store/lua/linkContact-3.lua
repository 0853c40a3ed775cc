--[[ Point a tenant's lookup indexes (phone, email, external_id) at a contact.

  Unique per tenant: a value already pointing at another contact is a conflict, unless
  the caller found that contact gone (a crash between the two writes of a create leaves
  such dangling entries) and lists it in ARGV[2] to be overwritten.

  KEYS[1] phone        HASH value -> contact id
  KEYS[2] email        HASH
  KEYS[3] external_id  HASH
  ARGV[1] contact_id
  ARGV[2] stale        space-separated contact ids that may be overwritten
  ARGV[3..5] new values for phone, email, external_id ("" leaves the index alone)
  ARGV[6..8] old values to unlink when they still point at this contact ("" none)

  Returns {} on success, or {field, existing_contact_id} of the first conflict.
]]
local rcall = redis.call
-- @include contacts

return link_contact(ARGV[1], ' ' .. ARGV[2] .. ' ', {ARGV[3], ARGV[4], ARGV[5]},
  {ARGV[6], ARGV[7], ARGV[8]})
