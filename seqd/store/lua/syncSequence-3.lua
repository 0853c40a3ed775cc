--[[ Mirror a sequence's state into one shard and bring the shard's enrollments in line.

  A sequence lives under its tenant's tag; enrollments live in shards. After every change
  of a sequence the caller runs this once per shard (sweep "") and then repeats each
  needed sweep until it reports done, so no single call holds Redis for long.

  KEYS[1] due       ZSET
  KEYS[2] outbox    STREAM
  KEYS[3] sequences HASH   sequence id -> "<status>:<version>:<steps>"
  ARGV[1] tag
  ARGV[2] now        ms
  ARGV[3] sequence_id
  ARGV[4] mirror     "<status>:<version>:<steps>"
  ARGV[5] sweep      "" | archive | unpark | shrink_active | shrink_paused
  ARGV[6] limit      enrollments handled at most in this call
  ARGV[7] cursor     last id handled by the previous call of a shrink sweep ("" first)

  Returns {done (0|1), next_cursor, handled}
]]
local rcall = redis.call
local due_key, outbox_key, seqs_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, seq, mirror, sweep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, cursor = tonumber(ARGV[6]), ARGV[7]
-- @include enrollment

local current = rcall('HGET', seqs_key, seq)
local function version_of(m) return tonumber(string.match(m or '', '^[^:]+:(%d+):')) or -1 end
-- An older writer never overwrites a newer mirror.
if version_of(current) <= version_of(mirror) then rcall('HSET', seqs_key, seq, mirror) end

local handled = 0
if sweep == 'archive' then
  for _, status in ipairs({'active', 'paused'}) do
    local ids = rcall('ZRANGE', k_status_index(tag, seq, status), 0, limit - handled - 1)
    for _, id in ipairs(ids) do
      local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
      finish(id, e, 'cancelled', 'sequence_archived', now, due_key)
      handled = handled + 1
    end
  end
  return {handled < limit and 1 or 0, '', handled}
elseif sweep == 'unpark' then
  local pkey = k_parked(tag, seq)
  local items = rcall('ZRANGE', pkey, 0, limit - 1, 'WITHSCORES')
  for i = 1, #items, 2 do
    rcall('ZADD', due_key, items[i + 1], items[i])
    rcall('ZREM', pkey, items[i])
    handled = handled + 1
  end
  return {handled < limit and 1 or 0, '', handled}
elseif sweep == 'shrink_active' or sweep == 'shrink_paused' then
  local steps = tonumber(string.match(mirror, ':(%d+)$'))
  local status = string.sub(sweep, 8)
  local start = cursor == '' and '-' or '(' .. cursor
  local ids = rcall('ZRANGE', k_status_index(tag, seq, status), start, '+', 'BYLEX',
    'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
    if tonumber(e['i']) >= steps then finish(id, e, 'completed', '', now, due_key) end
    handled = handled + 1
  end
  return {#ids < limit and 1 or 0, ids[#ids] or '', handled}
end
return {1, '', 0}
