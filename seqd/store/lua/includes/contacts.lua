-- A tenant's lookup indexes (phone, email, external_id: HASH value -> contact id), unique
-- per tenant. Expects: rcall, KEYS[1..3] the phone, email and external_id indexes.

local LOOKUP_NAMES = {'phone', 'email', 'external_id'}

-- Point the indexes at `cid` for the non-empty `new` values (a list of 3), unlinking the
-- `old` ones (a list of 3, "" for none) that still point at it. A value already pointing
-- at another contact is a conflict, unless that contact is listed in `stale` (" id id ",
-- found gone by the caller): then nothing is written and {field, owner} is returned.
local function link_contact(cid, stale, new, old)
  for i = 1, 3 do
    local value = new[i]
    if value ~= '' then
      local owner = rcall('HGET', KEYS[i], value)
      if owner and owner ~= cid and not string.find(stale, ' ' .. owner .. ' ', 1, true) then
        return {LOOKUP_NAMES[i], owner}
      end
    end
  end
  for i = 1, 3 do
    local value = new[i]
    if old[i] ~= '' and old[i] ~= value and rcall('HGET', KEYS[i], old[i]) == cid then
      rcall('HDEL', KEYS[i], old[i])
    end
    if value ~= '' then rcall('HSET', KEYS[i], value, cid) end
  end
  return {}
end
