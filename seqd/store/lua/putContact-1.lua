--[[ Create or update a contact.

  KEYS[1] contact  HASH  the contact (its key also fixes the shard)
  ARGV[1] tag
  ARGV[2] now      ms: `updated_at` of an update. A created contact stores neither time:
                   its created_at is the time in its id, made at `now`, and its updated_at
                   that until its first update (store/codec.py `contact`).
  ARGV[3] tenant
  ARGV[4] contact_id
  ARGV[5] mode     create | update
  ARGV[6..] field, value pairs to set; a value of "\0" deletes the field. Field `ac` (the
            account's digest, seqd/accounts.py) also moves the contact between the shard's
            account sets (k_account_contacts).

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
  rcall('HSET', ckey, 'tenant', tenant)
  -- The listing holds ids without their prefix ("con_"; 16 B less a member).
  rcall('ZADD', k_tenant_contacts(tag, tenant), 0, string.sub(cid, 5))
elseif owner ~= tenant then
  return redis.error_reply('NOT_FOUND')
end
local account = rcall('HGET', ckey, 'ac')
for i = 6, #ARGV, 2 do
  if ARGV[i] == 'ac' and ARGV[i + 1] ~= account then
    -- The contact's account (seqd/accounts.py) moves: so does its entry in the shard's sets.
    if account then rcall('SREM', k_account_contacts(tag, tenant, account), cid) end
    if ARGV[i + 1] ~= '\0' then rcall('SADD', k_account_contacts(tag, tenant, ARGV[i + 1]), cid) end
  end
  if ARGV[i + 1] == '\0' then rcall('HDEL', ckey, ARGV[i])
  else rcall('HSET', ckey, ARGV[i], ARGV[i + 1]) end
end
if mode == 'update' then rcall('HSET', ckey, 'updated_at', now) end
return rcall('HGETALL', ckey)
