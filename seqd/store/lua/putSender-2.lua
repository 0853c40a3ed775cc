--[[ Create, replace or delete a sender record, compare-and-set; a deleted sender's budget
  goes with it.

  KEYS[1] senders   HASH sender id -> record (JSON), the tenant's senders
  KEYS[2] budgets   HASH the tenant's sender budgets (takeBudget-1.lua)
  ARGV[1] sender_id
  ARGV[2] expected  the record as the caller read it; "" to create
  ARGV[3] record    the new record; "" to delete
  ARGV[4] max       senders a tenant may have (checked on create)

  Returns 1.
  Errors: NOT_FOUND; CONFLICT (changed since it was read); LIMIT:<max>
]]
local rcall = redis.call
local senders_key, budgets_key = KEYS[1], KEYS[2]
local id, expected, record, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local current = rcall('HGET', senders_key, id)
if expected == '' then
  if current then return redis.error_reply('CONFLICT') end
  if rcall('HLEN', senders_key) >= max then return redis.error_reply('LIMIT:' .. max) end
else
  if not current then return redis.error_reply('NOT_FOUND') end
  if current ~= expected then return redis.error_reply('CONFLICT') end
end
if record == '' then
  rcall('HDEL', senders_key, id)
  rcall('HDEL', budgets_key, id .. ':s', id .. ':h', id .. ':g', id .. ':d')
else
  rcall('HSET', senders_key, id, record)
end
return 1
