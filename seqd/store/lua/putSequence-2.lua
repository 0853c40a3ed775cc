--[[ Create or replace a sequence document, with optimistic concurrency.

  KEYS[1] sequence   HASH  fields doc (JSON), v (version), st (status)
  KEYS[2] sequences  ZSET  the tenant's sequence ids
  ARGV[1] sequence_id
  ARGV[2] doc        JSON of the whole sequence
  ARGV[3] status
  ARGV[4] expected   version the caller read ("0" to create)

  Returns the new version.
  Errors: EXISTS (create of an id in use); NOT_FOUND; CONFLICT (version moved on)
]]
local rcall = redis.call
local skey, list_key = KEYS[1], KEYS[2]
local id, doc, status, expected = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local version = tonumber(rcall('HGET', skey, 'v') or '0')
if expected == 0 and version ~= 0 then return redis.error_reply('EXISTS') end
if expected ~= 0 and version == 0 then return redis.error_reply('NOT_FOUND') end
if version ~= expected then return redis.error_reply('CONFLICT') end
version = version + 1
rcall('HSET', skey, 'doc', doc, 'v', version, 'st', status)
rcall('ZADD', list_key, 0, id)
return version
