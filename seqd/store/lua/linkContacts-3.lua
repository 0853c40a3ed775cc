--[[ Point a tenant's lookup indexes at new contacts, a batch at a time: as linkContact for
  each, in order, so a later contact of the batch conflicts with an earlier one that took
  its value.

  KEYS[1] phone        HASH value -> contact id
  KEYS[2] email        HASH
  KEYS[3] external_id  HASH
  ARGV[1..] contacts, 4 values each: contact_id, phone, email, external_id ("" none)

  Returns one reply per contact: {} linked, or {field, existing_contact_id} of its first
  conflict (then none of its values were linked).

  A fixed number of commands whatever the batch's size: one HMGET per index for the
  owners, then one HSET per index for the values taken (an earlier contact's value of the
  batch is seen in `owners`). The contacts are new, so an owner is never the contact
  itself. Entries hold the id without its prefix, as includes/contacts.lua writes them.
]]
local rcall = redis.call
local NAMES = {'phone', 'email', 'external_id'}
-- Values per command: unpack() is limited to a few thousand (an intake batch may be more).
local BULK = 1000

local asked = {{}, {}, {}}
for i = 1, #ARGV, 4 do
  for k = 1, 3 do
    local value = ARGV[i + k]
    if value ~= '' then asked[k][#asked[k] + 1] = value end
  end
end
-- Every contact id has the same prefix ("con_"), which entries leave out.
local head = string.match(ARGV[1] or '', '^[^_]*_') or ''
local owners = {{}, {}, {}}
for k = 1, 3 do
  local values = asked[k]
  for j = 1, #values, BULK do
    local found = rcall('HMGET', KEYS[k], unpack(values, j, math.min(j + BULK - 1, #values)))
    for n = 1, #found do
      local stored = found[n]
      if stored then
        -- An entry written before the prefix was left out holds the whole id.
        if not string.find(stored, '_', 1, true) then stored = head .. stored end
        owners[k][values[j + n - 1]] = stored
      end
    end
  end
end

local out, writes = {}, {{}, {}, {}}
for i = 1, #ARGV, 4 do
  local cid, clash = ARGV[i], nil
  local body = string.sub(cid, #head + 1)
  for k = 1, 3 do
    local value = ARGV[i + k]
    if value ~= '' and owners[k][value] then
      clash = {NAMES[k], owners[k][value]}
      break
    end
  end
  if clash then
    out[#out + 1] = clash
  else
    for k = 1, 3 do
      local value = ARGV[i + k]
      if value ~= '' then
        owners[k][value] = cid
        writes[k][#writes[k] + 1] = value
        writes[k][#writes[k] + 1] = body
      end
    end
    out[#out + 1] = {}
  end
end
for k = 1, 3 do
  local taken = writes[k]
  for j = 1, #taken, 2 * BULK do
    rcall('HSET', KEYS[k], unpack(taken, j, math.min(j + 2 * BULK - 1, #taken)))
  end
end
return out
