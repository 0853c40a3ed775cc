--[[ Take one send from a sender's budget for each step of a batch (seqd/senders/budget.py).

  Per sender: a GCRA bucket (as limitRate-1.lua) for each of per_second (L per 1,000 ms),
  per_hour (L per 3,600,000 ms) and min_gap (1 per gap ms), and a count of the sends of its
  local day that starts again when the day changes. A send is taken only when every limit
  allows it, and then from every limit. An ask names its senders in pool order; with a
  rotation cursor it tries them from the one after the cursor's last pick (round robin
  across every process), and takes from the first with budget.

  KEYS[1] budgets   HASH "<sender id>:s|h|g" -> arrival time (ms), "<sender id>:d" ->
                    "<day>:<count>", "rr:<pool>" -> place last taken in that pool
  ARGV[1] now       ms
  ARGV[2] mode      "take", or "peek": answer as a take would and write nothing
  ARGV[3] senders   S, then S groups of 8: id, per_second, per_hour, gap_ms (0: no such
                    limit), day (local day number), cap (that day's, -1: none), day_end
                    (ms of the next local midnight), paused (1|0)
  then the pools:   P, then P groups: name (its rotation cursor's, "": none), k, and the
                    places of its k senders among the senders above
  then the asks:    one value each: a pool's number (1..P), or -place: that sender alone

  Returns per ask three integers: the place taken among the ask's k senders (0: none);
  when none, the earliest ms one of them has budget (-1: all paused), else 0; the taken (or
  first) sender's count of sends today before the ask.
]]
local rcall = redis.call
local budgets_key = KEYS[1]
local now, peek = tonumber(ARGV[1]), ARGV[2] == 'peek'
local n = tonumber(ARGV[3])

local senders = {}
local fields = {}
for i = 1, n do
  local at = 3 + (i - 1) * 8
  local id = ARGV[at + 1]
  senders[i] = {
    id = id, per_second = tonumber(ARGV[at + 2]), per_hour = tonumber(ARGV[at + 3]),
    gap = tonumber(ARGV[at + 4]), day = ARGV[at + 5], cap = tonumber(ARGV[at + 6]),
    day_end = tonumber(ARGV[at + 7]), paused = ARGV[at + 8] == '1',
  }
  local f = #fields
  fields[f + 1], fields[f + 2], fields[f + 3], fields[f + 4] = id .. ':s', id .. ':h',
    id .. ':g', id .. ':d'
end
if n > 0 then
  local stored = {}
  for first = 1, #fields, BULK do
    local last = math.min(#fields, first + BULK - 1)
    local got = rcall('HMGET', budgets_key, unpack(fields, first, last))
    for i = 1, #got do stored[first + i - 1] = got[i] end
  end
  for i = 1, n do
    local s = senders[i]
    s.s = tonumber(stored[4 * i - 3]) or 0
    s.h = tonumber(stored[4 * i - 2]) or 0
    s.g = tonumber(stored[4 * i - 1]) or 0
    local day, count = string.match(stored[4 * i] or '', '^(%d+):(%d+)$')
    s.count = (day == s.day) and tonumber(count) or 0
  end
end

-- One GCRA bucket of `limit` per `period` ms: (true, new arrival time) or (false, the
-- ms it allows the next send at).
local function bucket(tat, limit, period)
  if tat < now then tat = now end
  local new_tat = tat + period / limit
  local allow_at = new_tat - period
  if now < allow_at then return false, allow_at end
  return true, new_tat
end

local changed = {}
local cursors = {}
-- Take one send from sender `s`: true, or false and when it can (-1: paused).
local function take(s)
  if s.paused then return false, -1 end
  local wait = 0
  if s.cap >= 0 and s.count >= s.cap then wait = s.day_end end
  local ok, s_tat, h_tat, g_tat = true, s.s, s.h, s.g
  if s.per_second > 0 then
    ok, s_tat = bucket(s.s, s.per_second, 1000)
    if not ok and s_tat > wait then wait = s_tat end
  end
  if s.per_hour > 0 then
    ok, h_tat = bucket(s.h, s.per_hour, 3600000)
    if not ok and h_tat > wait then wait = h_tat end
  end
  if s.gap > 0 then
    ok, g_tat = bucket(s.g, 1, s.gap)
    if not ok and g_tat > wait then wait = g_tat end
  end
  if wait > 0 then return false, math.ceil(wait) end
  s.s, s.h, s.g, s.count = s_tat, h_tat, g_tat, s.count + 1
  changed[s] = true
  return true, 0
end

-- The pools the asks name, each once: {name, members = {sender, ...}}.
local at = 4 + n * 8
local pools = {}
for p = 1, tonumber(ARGV[at]) do
  local name, k = ARGV[at + 1], tonumber(ARGV[at + 2])
  local members = {}
  for j = 1, k do members[j] = senders[tonumber(ARGV[at + 2 + j])] end
  pools[p] = {name = name, members = members}
  at = at + 2 + k
end

local out = {}
for i = at + 1, #ARGV do
  local ask = tonumber(ARGV[i])
  local name, members = '', nil
  if ask < 0 then
    members = {senders[-ask]}
  else
    name, members = pools[ask].name, pools[ask].members
  end
  local k = #members
  local start = 0
  if name ~= '' then
    if cursors[name] == nil then
      cursors[name] = {place = tonumber(rcall('HGET', budgets_key, 'rr:' .. name) or '0') or 0}
    end
    start = cursors[name].place % k
  end
  local taken, soonest, used = 0, -1, 0
  for j = 0, k - 1 do
    local place = (start + j) % k + 1
    local s = members[place]
    local ok, wait = take(s)
    if ok then
      taken, soonest, used = place, 0, s.count - 1
      break
    end
    if wait ~= -1 and (soonest == -1 or wait < soonest) then soonest = wait end
  end
  if taken == 0 then
    used = members[1].count
  elseif name ~= '' then
    cursors[name].place = taken
    cursors[name].dirty = true
  end
  out[#out + 1], out[#out + 2], out[#out + 3] = taken, soonest, used
end

if not peek then
  -- Only the buckets of the limits a sender has move (take leaves the others as read):
  -- each field written is a scan of the hash while it is a listpack.
  local writes = {}
  for s in pairs(changed) do
    local w = #writes
    if s.per_second > 0 then
      writes[w + 1], writes[w + 2] = s.id .. ':s', string.format('%.3f', s.s)
      w = w + 2
    end
    if s.per_hour > 0 then
      writes[w + 1], writes[w + 2] = s.id .. ':h', string.format('%.3f', s.h)
      w = w + 2
    end
    if s.gap > 0 then
      writes[w + 1], writes[w + 2] = s.id .. ':g', string.format('%.3f', s.g)
      w = w + 2
    end
    writes[w + 1], writes[w + 2] = s.id .. ':d', s.day .. ':' .. s.count
  end
  for pool, c in pairs(cursors) do
    if c.dirty then
      writes[#writes + 1] = 'rr:' .. pool
      writes[#writes + 1] = c.place
    end
  end
  for first = 1, #writes, BULK do
    rcall('HSET', budgets_key, unpack(writes, first, math.min(#writes, first + BULK - 1)))
  end
end
return out
