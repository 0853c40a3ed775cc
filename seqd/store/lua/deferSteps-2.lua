--[[ Defer steps of one shard to a later due time, no attempt counted: their window or
  quiet hours are closed, or their sender's budget or their contact's frequency cap holds
  them (store/settles.py Defer). The batched form of advance's `defer` outcome, for steps
  the caller peeked at or claimed itself: it built each event from what it read under the
  same token, so nothing of the hash is read here.

  A step applies only while `token` (its score as the peek saw it, or its lease token) is
  still the member's score in its sequence's queue, as in advance: a step another process
  leased meanwhile, or that a transition moved, is left alone.

  KEYS[1] heads   ZSET   the shard's sequence heads
  KEYS[2] outbox  STREAM
  ARGV[1] tag
  ARGV[2] now       ms
  ARGV[3] groups    JSON array of [seq, tenant, step, reason] (DEFER_GROUP): what steps
                    share, once per call
  ARGV[4..]         per step, DEFER_STEP: id, group (its place in ARGV[3], from 1), token,
                    until (ms, whole), zone ("<source>:<zone>", "" for none), event (the
                    sequence.step.deferred data, JSON text)

  Each step: `n` = until, `ua` = now, `dr` = "<step>:<reason>", `z` = zone when given, the
  member rescheduled at until, its event appended (batched per tenant).
  Returns {applied, 0, {stale id, ...}} (advance's shape).
  Errors: BAD_ITEMS:<which> (a malformed group or step; nothing is written)
]]
local rcall = redis.call
local heads_key, outbox_key = KEYS[1], KEYS[2]
local tag, now = ARGV[1], ARGV[2]
-- @include enrollment
-- @include dispatch
-- @include settles

local ok, groups = pcall(cjson.decode, ARGV[3])
if not ok or type(groups) ~= 'table' or (#groups == 0 and next(groups) ~= nil) then
  return redis.error_reply('BAD_ITEMS:groups not a JSON array')
end
for n, g in ipairs(groups) do
  if type(g) ~= 'table' or type(g[DG_SEQ]) ~= 'string' or g[DG_SEQ] == ''
    or type(g[DG_TENANT]) ~= 'string' or g[DG_TENANT] == '' or type(g[DG_STEP]) ~= 'number'
    or type(g[DG_REASON]) ~= 'string' or g[DG_REASON] == '' then
    return redis.error_reply('BAD_ITEMS:group ' .. n)
  end
  g.queue = k_queue(tag, g[DG_SEQ])
  g.dr = string.format('%d', g[DG_STEP]) .. ':' .. g[DG_REASON]
  g.i = string.format('%d', g[DG_STEP])
  g.deferred = 0  -- its steps deferred, counted once at the end (includes/stats.lua)
end
local count = (#ARGV - 3) / D_WIDTH
if count % 1 ~= 0 then
  return redis.error_reply('BAD_ITEMS:steps not ' .. D_WIDTH .. ' values each')
end
local SKIP = 3 - D_WIDTH
for n = 1, count do
  local b = D_WIDTH * n + SKIP
  local until_at = tonumber(ARGV[b + D_UNTIL])
  if ARGV[b + D_ID] == '' or not groups[tonumber(ARGV[b + D_GROUP])] or not until_at
    or until_at % 1 ~= 0 or ARGV[b + D_EVENT] == '' then
    return redis.error_reply('BAD_ITEMS:step ' .. n)
  end
end

local applied, stale = 0, {}
-- The queue writes per sequence, at the end in chunks, with the earliest for its head.
-- (A call names each member once: the caller defers a step once per round trip.)
local zadds, earliest = {}, {}
for n = 1, count do
  local b = D_WIDTH * n + SKIP
  local id, g = ARGV[b + D_ID], groups[tonumber(ARGV[b + D_GROUP])]
  local until_at, zone = ARGV[b + D_UNTIL], ARGV[b + D_ZONE]
  local ekey = k_enrollment(tag, id)
  local written = false
  if holds(id, ARGV[b + D_TOKEN], g.queue) then
    local fields = {'i', g.i, 'n', until_at, 'ua', now, 'dr', g.dr}
    if zone ~= '' then
      fields[#fields + 1] = 'z'; fields[#fields + 1] = zone
    end
    -- A live hash has `i` and `n`: an HSET that adds every field found none (deleted by
    -- hand), and is undone.
    if rcall('HSET', ekey, unpack(fields)) == #fields / 2 then
      rcall('DEL', ekey)
    else
      written = true
    end
  end
  if written then
    applied = applied + 1
    local seq, due = g[DG_SEQ], tonumber(until_at)
    local args = zadds[seq]
    if not args then
      args = {}
      zadds[seq], earliest[seq] = args, due
    elseif due < earliest[seq] then
      earliest[seq] = due
    end
    args[#args + 1] = until_at
    args[#args + 1] = id
    emit_batched('sequence.step.deferred', g[DG_TENANT], now, ARGV[b + D_EVENT])
    g.deferred = g.deferred + 1
  else
    stale[#stale + 1] = id
  end
end
for seq, args in pairs(zadds) do
  zadd_chunked(k_queue(tag, seq), args)
  rcall('ZADD', heads_key, 'LT', string.format('%d', earliest[seq]), seq)
end
for _, g in ipairs(groups) do
  if g.deferred > 0 then
    -- (A step not sent yet has no variant.)
    stats_count(g[DG_SEQ], g[DG_STEP], NO_VARIANT, 'deferred', now, g.deferred)
  end
end
flush_batched(now)
return {applied, 0, stale}
