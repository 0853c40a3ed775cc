--[[ Schema 1 -> 2, one bounded step for one shard: move the shard's one due index and
  the items parked by sequence into the sequences' queues (keys.py "queue"), drop the
  active listings the queues replace, and set the heads. Safe to run from several
  processes at once and again after a crash: each step moves what is left.

  KEYS[1] heads     ZSET  (schema 2)
  KEYS[2] due       ZSET  (schema 1) enrollment id -> due time or lease token
  KEYS[3] mirrors HASH  sequence id -> "<status>:<version>:<steps>"
  ARGV[1] tag
  ARGV[2] parked    the schema 1 parked key of a sequence, less its id (keys.V1_PARKED)
  ARGV[3] limit     members moved at most

  Returns {done (0|1), members moved}
]]
local rcall = redis.call
local heads_key, due_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, parked_prefix, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- @include enrollment

-- Into the queue of the sequence the enrollment says (a member whose hash is gone is
-- dropped, as a claim would drop it).
local function move(from, items, seq)
  for i = 1, #items, 2 do
    local id = items[i]
    local s = seq or rcall('HGET', k_enrollment(tag, id), 's')
    if s then rcall('ZADD', k_queue(tag, s), 'NX', items[i + 1], id) end
    rcall('ZREM', from, id)
  end
  return #items / 2
end

local items = rcall('ZRANGE', due_key, 0, limit - 1, 'WITHSCORES')
if #items > 0 then return {0, move(due_key, items, nil)} end

local seqs = rcall('HKEYS', mirrors_key)
for _, seq in ipairs(seqs) do
  local pkey = parked_prefix .. seq
  items = rcall('ZRANGE', pkey, 0, limit - 1, 'WITHSCORES')
  if #items > 0 then return {0, move(pkey, items, seq)} end
end

for _, seq in ipairs(seqs) do
  rcall('UNLINK', k_status_index(tag, seq, 'active'))
  refresh_head(seq, string.match(rcall('HGET', mirrors_key, seq), '^([^:]+)'))
end
return {1, 0}
