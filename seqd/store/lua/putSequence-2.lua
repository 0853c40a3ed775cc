--[[ Create or replace a sequence document, with optimistic concurrency.

  KEYS[1] sequence   HASH  fields doc (JSON), v (version), st (status), steps:<n> (JSON
                           of the steps of each earlier version n of its steps:
                           enrollments may still run on it)
  KEYS[2] sequences  ZSET  the tenant's sequence ids
  ARGV[1] sequence_id
  ARGV[2] doc        JSON of the whole sequence
  ARGV[3] status
  ARGV[4] expected   version the caller read ("0" to create)
  ARGV[5] kept       optional: the version of the steps the doc replaces, to keep
  ARGV[6] kept_steps with ARGV[5]: their JSON

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
if ARGV[5] then rcall('HSET', skey, 'steps:' .. ARGV[5], ARGV[6]) end
rcall('ZADD', list_key, 0, id)
return version
