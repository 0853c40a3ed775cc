--[[ Mirror a sequence's state into one shard and bring the shard's enrollments in line.

  A sequence lives under its tenant's tag; enrollments live in shards. After every change
  of a sequence the caller runs this once per shard (sweep "") and then repeats each
  needed sweep until it reports done, so no single call holds Redis for long. Every call
  also sets the sequence's head in the shard as its (newest) mirror says: the queue's first
  score while it is active or archived (claims cancel an archived one's steps), none while
  it is paused or draft, so a paused sequence's queue waits untouched and a resumed one's
  overdue steps are due at once, in due order.

  KEYS[1] heads     ZSET
  KEYS[2] outbox    STREAM
  KEYS[3] mirrors HASH   sequence id -> "<status>:<version>:<steps>"
  ARGV[1] tag
  ARGV[2] now        ms
  ARGV[3] sequence_id
  ARGV[4] mirror     "<status>:<version>:<steps>" (store/mirrors.py)
  ARGV[5] sweep      "" | archive | shrink_active | shrink_paused | retarget_active |
                     retarget_paused
  ARGV[6] limit      enrollments handled at most in this call (*_active: about)
  ARGV[7] cursor     where the previous call of a shrink or retarget sweep stopped ("" first):
                     the last id handled (*_paused), the ZSCAN cursor (*_active)
  ARGV[8] fields     optional: the contact fields the sequence's messages can use at the
                     mirror's version, comma-separated; written with the mirror as
                     "<version>:<fields>" in the shard's `sf` hash (claimDue reads them)
  ARGV[9] moves      the retarget sweeps' JSON {"v": new steps version (text), "n": its
                     step count, "w": {version: [each step's wait, ms]}, "m": {version:
                     [each step's index in v, or -1]}}: every live enrollment moves to
                     version v (field `sv`); one whose next step is past v's last
                     completes; the others but a leased one are due their step's new wait
                     after their last send (n - old wait + new wait; a paused one's `n`,
                     which resume starts from); the step facts of the steps it passed
                     follow them (`carry_facts`)

  Returns {done (0|1), next_cursor, handled}
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, seq, mirror, sweep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, cursor = tonumber(ARGV[6]), ARGV[7]
-- @include enrollment

local current = rcall('HGET', mirrors_key, seq)
local function version_of(m) return tonumber(string.match(m or '', '^[^:]+:(%d+):')) or -1 end
-- An older writer never overwrites a newer mirror.
if version_of(current) <= version_of(mirror) then
  rcall('HSET', mirrors_key, seq, mirror)
  current = mirror
  if ARGV[8] then
    rcall('HSET', k_sequence_fields(tag), seq, version_of(mirror) .. ':' .. ARGV[8])
  end
end

local qkey = k_queue(tag, seq)

-- The head as the mirror says, after this call's sweep (which may empty the queue).
local function with_head(result)
  refresh_head(seq, string.match(current, '^([^:]+)'))
  return result
end

-- The next batch of a shrink or retarget sweep, after `cursor`: of the queue (`active`) or
-- of the paused. Returns ids, the next cursor, done.
local function live_batch(active)
  if active then
    -- The queue's order moves as steps go out: ZSCAN still returns every member that
    -- stays in it from the first call to the last.
    local reply = rcall('ZSCAN', qkey, cursor == '' and '0' or cursor, 'COUNT', limit)
    local ids = {}
    for i = 1, #reply[2], 2 do ids[#ids + 1] = reply[2][i] end
    return ids, reply[1], reply[1] == '0'
  end
  local start = cursor == '' and '-' or '(' .. cursor
  local ids = rcall('ZRANGE', k_status_index(tag, seq, 'paused'), start, '+', 'BYLEX',
    'LIMIT', 0, limit)
  return ids, ids[#ids] or '', #ids < limit
end

-- Step facts (`o`, includes/enrollment.lua set_outcome) follow the steps they are about
-- to their index in the new version (`map`, store/sequences.py step_map) when the
-- enrollment has passed that index too; a passed index that gets no step's facts reads
-- NOT_RUN. `mv` maps the index of each step sent before the move to its index in `o` (or
-- -1), for the receipts that come later (fact_index).
local function carry_facts(ekey, e, i, map)
  if i == 0 then return end
  local o, letters = e['o'] or '', {}
  for t = 1, i do letters[t] = NOT_RUN end
  for p = 1, math.min(i, #map) do
    local t = map[p]
    if t >= 0 and t < i then
      local was = string.sub(o, p, p)
      letters[t + 1] = was ~= '' and was or '-'
    end
  end
  local before, sends = {}, {}
  for p in string.gmatch(e['mv'] or '', '[^,]+') do before[#before + 1] = tonumber(p) end
  for j = 1, i do
    local at = j - 1
    if j <= #before then at = before[j] end
    local t = at >= 0 and map[at + 1] or -1
    sends[j] = (t and t < i) and t or -1
  end
  rcall('HSET', ekey, 'o', table.concat(letters), 'mv', table.concat(sends, ','))
end

local handled = 0
if sweep == 'archive' then
  -- Each one handled leaves its listing (the queue, the paused index): take from the front.
  for _, key in ipairs({qkey, k_status_index(tag, seq, 'paused')}) do
    local ids = rcall('ZRANGE', key, 0, limit - handled - 1)
    for _, id in ipairs(ids) do
      local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
      -- (A member whose hash is gone or already ended would come back every call.)
      if not e['st'] or finish(id, e, 'cancelled', 'sequence_archived', now) then
        rcall('ZREM', key, id)
      end
      handled = handled + 1
    end
  end
  return with_head({handled < limit and 1 or 0, '', handled})
elseif sweep == 'shrink_active' or sweep == 'shrink_paused' then
  local steps = tonumber(string.match(mirror, ':(%d+)$'))
  local ids, next_cursor, done = live_batch(sweep == 'shrink_active')
  for _, id in ipairs(ids) do
    local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
    if tonumber(e['i'] or 0) >= steps and e['st'] then finish(id, e, 'completed', '', now) end
    handled = handled + 1
  end
  return with_head({done and 1 or 0, next_cursor, handled})
elseif sweep == 'retarget_active' or sweep == 'retarget_paused' then
  local moves = cjson.decode(ARGV[9])
  local new_v, count, waits = moves.v, moves.n, moves.w
  -- (ZSCAN may return a member twice: the second time it is on new_v already.)
  local ids, next_cursor, done = live_batch(sweep == 'retarget_active')
  for _, id in ipairs(ids) do
    local ekey = k_enrollment(tag, id)
    local e = to_table(rcall('HGETALL', ekey))
    local old_v = e['sv'] or '1'
    if (e['st'] == 'active' or e['st'] == 'paused') and old_v ~= new_v then
      local i = tonumber(e['i'] or 0)
      if i >= count then
        finish(id, e, 'completed', '', now)
      else
        rcall('HSET', ekey, 'sv', new_v)
        if moves.m[old_v] then carry_facts(ekey, e, i, moves.m[old_v]) end
        local old_w = waits[old_v]
        -- (A leased step is being sent under the old version: its claim settles it.)
        local active = e['st'] == 'active'
        local score = active and rcall('ZSCORE', qkey, id)
        if old_w and old_w[i + 1] and e['n'] and not (active and (not score or is_leased(score)))
        then
          local due = string.format('%d', tonumber(e['n']) - old_w[i + 1] + waits[new_v][i + 1])
          rcall('HSET', ekey, 'n', due)
          if active then schedule(id, seq, due) end
        end
      end
    end
    handled = handled + 1
  end
  return with_head({done and 1 or 0, next_cursor, handled})
end
return with_head({1, '', 0})
