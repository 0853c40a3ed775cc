--[[ Create or update a contact.

  KEYS[1] contact  HASH  the contact (its key also fixes the shard)
  ARGV[1] tag
  ARGV[2] now      ms
  ARGV[3] tenant
  ARGV[4] contact_id
  ARGV[5] mode     create | update
  ARGV[6..] field, value pairs to set; a value of "\0" deletes the field

  Returns the contact hash (flat).
  Errors: EXISTS (create of an id in use); NOT_FOUND (update of a missing contact or one
  of another tenant)
]]
local rcall = redis.call
local ckey = KEYS[1]
local tag, now, tenant, cid, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local owner = rcall('HGET', ckey, 'tenant')
if mode == 'create' then
  if owner then return redis.error_reply('EXISTS') end
  rcall('HSET', ckey, 'tenant', tenant, 'created_at', now)
  rcall('ZADD', k_tenant_contacts(tag, tenant), 0, cid)
elseif owner ~= tenant then
  return redis.error_reply('NOT_FOUND')
end
for i = 6, #ARGV, 2 do
  if ARGV[i + 1] == '\0' then rcall('HDEL', ckey, ARGV[i])
  else rcall('HSET', ckey, ARGV[i], ARGV[i + 1]) end
end
rcall('HSET', ckey, 'updated_at', now)
return rcall('HGETALL', ckey)
