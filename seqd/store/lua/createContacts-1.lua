--[[ Create new contacts of one shard, a batch at a time (putContact's create for each).

  KEYS[1] tenant_contacts ZSET  the tenant's contacts in this shard
  ARGV[1] tag      the shard's hash tag (the contacts' keys are built from it)
  ARGV[2] now      ms (unused: a contact's created_at is the time in its id, made at now,
                   and stored nowhere else; putContact-1.lua)
  ARGV[3] tenant
  ARGV[4..] contacts, each: contact_id, n, then n field, value pairs ("\0" values are
            left out); one with `ac` (its account's digest) joins that account's set

  Returns {} once all are created; nothing is written when one fails.
  Errors: EXISTS (an id in use)
]]
local rcall = redis.call
local listing = KEYS[1]
local tag, now, tenant = ARGV[1], ARGV[2], ARGV[3]

local i = 4
local starts = {}
while i <= #ARGV do
  if rcall('EXISTS', k_contact(tag, ARGV[i])) == 1 then return redis.error_reply('EXISTS') end
  starts[#starts + 1] = i
  i = i + 2 + 2 * tonumber(ARGV[i + 1])
end
for _, s in ipairs(starts) do
  local cid = ARGV[s]
  local values = {'tenant', tenant}
  local account = nil
  for f = s + 2, s + 1 + 2 * tonumber(ARGV[s + 1]), 2 do
    if ARGV[f + 1] ~= '\0' then
      values[#values + 1] = ARGV[f]
      values[#values + 1] = ARGV[f + 1]
      if ARGV[f] == 'ac' then account = ARGV[f + 1] end
    end
  end
  rcall('HSET', k_contact(tag, cid), unpack(values))
  rcall('ZADD', listing, 0, cid)
  if account then rcall('SADD', k_account_contacts(tag, tenant, account), cid) end
end
return {}
