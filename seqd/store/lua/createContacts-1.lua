--[[ Create new contacts of one shard, a batch at a time (putContact's create for each).

  KEYS[1] tenant_contacts ZSET  the tenant's contacts in this shard (ids less "con_")
  ARGV[1] tag      the shard's hash tag (the contacts' keys are built from it)
  ARGV[2] now      ms (unused: a contact's created_at is the time in its id, made at now,
                   and stored nowhere else; putContact-1.lua)
  ARGV[3] tenant
  ARGV[4..] contacts, each: contact_id, n, then n field, value pairs ("\0" values are
            left out); one with `ac` (its account's digest) joins that account's set

  Returns {} once all are created; nothing is written when one fails.
  Errors: EXISTS (an id in use)

  Per contact one HSET (and an SADD with an account); the id check and the listing are
  one EXISTS and one ZADD for the whole batch.
]]
local rcall = redis.call
local listing = KEYS[1]
local tag, tenant = ARGV[1], ARGV[3]
-- Values per command: unpack() is limited to a few thousand (an intake batch may be more).
local BULK = 1000

local i = 4
local starts, hashes, members = {}, {}, {}
while i <= #ARGV do
  starts[#starts + 1] = i
  hashes[#hashes + 1] = k_contact(tag, ARGV[i])
  members[#members + 1] = 0
  -- The listing holds ids without their prefix ("con_"; 16 B less a member).
  members[#members + 1] = string.sub(ARGV[i], 5)
  i = i + 2 + 2 * tonumber(ARGV[i + 1])
end
for j = 1, #hashes, BULK do
  if rcall('EXISTS', unpack(hashes, j, math.min(j + BULK - 1, #hashes))) > 0 then
    return redis.error_reply('EXISTS')
  end
end
for n, s in ipairs(starts) do
  local values = {'tenant', tenant}
  local account = nil
  for f = s + 2, s + 1 + 2 * tonumber(ARGV[s + 1]), 2 do
    if ARGV[f + 1] ~= '\0' then
      values[#values + 1] = ARGV[f]
      values[#values + 1] = ARGV[f + 1]
      if ARGV[f] == 'ac' then account = ARGV[f + 1] end
    end
  end
  rcall('HSET', hashes[n], unpack(values))
  if account then rcall('SADD', k_account_contacts(tag, tenant, account), ARGV[s]) end
end
for j = 1, #members, 2 * BULK do
  rcall('ZADD', listing, unpack(members, j, math.min(j + 2 * BULK - 1, #members)))
end
return {}
