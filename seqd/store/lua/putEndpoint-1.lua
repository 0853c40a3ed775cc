--[[ Create, replace or delete a webhook endpoint record, compare-and-set (also a
  schedule's: any JSON record in a tenant's HASH of records).

  KEYS[1] endpoints  HASH endpoint id -> record (JSON), the tenant's endpoints
  ARGV[1] endpoint_id
  ARGV[2] expected   the record as the caller read it; "" to create
  ARGV[3] record     the new record; "" to delete
  ARGV[4] max        endpoints a tenant may have (checked on create)

  Returns 1.
  Errors: NOT_FOUND; CONFLICT (changed since it was read); LIMIT:<max>
]]
local rcall = redis.call
local endpoints_key = KEYS[1]
local id, expected, record, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local current = rcall('HGET', endpoints_key, id)
if expected == '' then
  if current then return redis.error_reply('CONFLICT') end
  if rcall('HLEN', endpoints_key) >= max then return redis.error_reply('LIMIT:' .. max) end
else
  if not current then return redis.error_reply('NOT_FOUND') end
  if current ~= expected then return redis.error_reply('CONFLICT') end
end
if record == '' then
  rcall('HDEL', endpoints_key, id)
else
  rcall('HSET', endpoints_key, id, record)
end
return 1
