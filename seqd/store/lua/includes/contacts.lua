-- A tenant's lookup indexes (phone, email, external_id: HASH value -> contact id), unique
-- per tenant. Expects: rcall, KEYS[1..3] the phone, email and external_id indexes.
-- An entry holds the contact id without its prefix ("con_"; 17 B less an entry of a large
-- index); one written before that holds the whole id. Ids' bodies have no "_".

local LOOKUP_NAMES = {'phone', 'email', 'external_id'}

-- The contact id of index `i`'s entry for `value` (nil: none), whichever form it has.
local function lookup_owner(i, value, head)
  local stored = rcall('HGET', KEYS[i], value)
  if stored and not string.find(stored, '_', 1, true) then return head .. stored end
  return stored
end

-- Point the indexes at `cid` for the non-empty `new` values (a list of 3), unlinking the
-- `old` ones (a list of 3, "" for none) that still point at it. A value already pointing
-- at another contact is a conflict, unless that contact is listed in `stale` (" id id ",
-- found gone by the caller): then nothing is written and {field, owner} is returned.
local function link_contact(cid, stale, new, old)
  local head = string.match(cid, '^[^_]*_')
  local body = string.sub(cid, #head + 1)
  for i = 1, 3 do
    local value = new[i]
    if value ~= '' then
      local owner = lookup_owner(i, value, head)
      if owner and owner ~= cid and not string.find(stale, ' ' .. owner .. ' ', 1, true) then
        return {LOOKUP_NAMES[i], owner}
      end
    end
  end
  for i = 1, 3 do
    local value = new[i]
    if old[i] ~= '' and old[i] ~= value and lookup_owner(i, old[i], head) == cid then
      rcall('HDEL', KEYS[i], old[i])
    end
    if value ~= '' then rcall('HSET', KEYS[i], value, body) end
  end
  return {}
end
