--[[ Add a value to, or remove it from, a tenant's suppression list of one channel.

  KEYS[1] list   HASH value -> JSON {reason, created_at}
  KEYS[2] index  ZSET value, all scores 0 (listing order)
  ARGV[1] action  add | remove
  ARGV[2] value   normalised phone (E.164) or email address
  ARGV[3] record  JSON {reason, created_at} (add only)
  ARGV[4] keep    remove only: a reason that is NOT removed ("" removes any)

  Returns {changed (0|1), the record now (add) or before (remove), "" for none}.
  An add keeps an existing record (first reason and time win).
]]
local rcall = redis.call
local list_key, index_key = KEYS[1], KEYS[2]
local action, value, record, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local current = rcall('HGET', list_key, value)
if action == 'add' then
  if current then return {0, current} end
  rcall('HSET', list_key, value, record)
  rcall('ZADD', index_key, 0, value)
  return {1, record}
elseif action == 'remove' then
  if not current then return {0, ''} end
  if keep ~= '' and cjson.decode(current)['reason'] == keep then return {0, current} end
  rcall('HDEL', list_key, value)
  rcall('ZREM', index_key, value)
  return {1, current}
end
return redis.error_reply('BAD_ACTION:' .. action)
