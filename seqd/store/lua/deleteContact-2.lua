--[[ Delete a contact, cancelling its active and paused enrollments first
  (cancel_reason contact_deleted).

  KEYS[1] heads   ZSET
  KEYS[2] outbox  STREAM
  ARGV[1] tag
  ARGV[2] now       ms
  ARGV[3] tenant
  ARGV[4] contact_id

  Returns the deleted contact hash (flat), so the caller can drop its lookup entries.
  Errors: NOT_FOUND
]]
local rcall = redis.call
local heads_key, outbox_key = KEYS[1], KEYS[2]
local tag, now, tenant, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- @include enrollment

local ckey = k_contact(tag, cid)
local flat = rcall('HGETALL', ckey)
local c = to_table(flat)
if c['tenant'] ~= tenant then return redis.error_reply('NOT_FOUND') end
-- Nothing waiting for its exclusive enrollment is made when that one is cancelled here.
rcall('DEL', k_exclusive_waiting(tag, cid))
for field, id in pairs(c) do
  if string.sub(field, 1, 2) == 'e:' then
    local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
    if e['st'] then finish(id, e, 'cancelled', 'contact_deleted', now) end
  end
end
rcall('DEL', ckey)
-- Its listing member is its id less "con_" (a listing of before schema 3: the whole id).
rcall('ZREM', k_tenant_contacts(tag, tenant), string.sub(cid, 5), cid)
if c['ac'] then rcall('SREM', k_account_contacts(tag, tenant, c['ac']), cid) end
emit('contact.deleted', tenant, now, {id = cid})
return flat
