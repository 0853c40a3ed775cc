--[[ Lease the steps a peek found (claimDue in peek mode), right before they are sent.

  A member is leased (enrollment.lua `lease_token`: its score becomes now + lease - 0.5 ms,
  the fencing token of its send) while its score is still the one the peek saw: every
  write that changes what a send of it would be (a claim, an advance, a transition) moves
  or removes it. A sequence whose mirror is no longer the one the peek read (paused,
  archived, edited) has none of its members leased: the next claim looks at them again.
  Then the sequence's head is set to its queue's first score. The lease is recorded for
  reclaimLeases: its token (one per call: a token another call of the shard holds is
  taken one ms earlier) with its worker and its queues. A peeked lease that had run
  out (a send that may have happened, to be sent again: claimDue's peek leaves it as it
  is) has its attempt counted here, as a claim counts it (dispatch.lua `count_unknown`):
  counted when it is about to be sent, not when a peek that may come to nothing saw it.

  KEYS[1] heads     ZSET   the shard's sequence heads
  KEYS[2] outbox    STREAM
  KEYS[3] mirrors HASH   sequence id -> "<status>:<version>:<steps>"
  ARGV[1] tag
  ARGV[2] now           ms
  ARGV[3] lease         ms
  ARGV[4] max_attempts
  ARGV[5] worker        the leasing process's id (keys.workers)
  ARGV[6..] per sequence: its id, its mirror as the peek read it, n, the n scores as the
            peek left them (the items' `k`) joined by ",", then the n enrollment ids
            (the scores in one text: a Lua string per ARGV is most of what an argument
            costs, and the usual answer, none changed, is one comparison)

  Returns {lease token, {id not leased, ...}, {id, attempts, ...} of the leases run out
  that were leased again}.
  Errors: BAD_ITEMS:<which> (nothing is written)
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, lease, max_attempts = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local worker = ARGV[5]
-- @include enrollment
-- @include dispatch

-- {sequence id, mirror, scores, first id's ARGV, n}; checked before anything is written.
local groups = {}
if not worker or worker == '' or string.find(worker, ' ', 1, true) then
  return redis.error_reply('BAD_ITEMS:worker id')
end
local i = 6
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  if not n or n < 0 or n % 1 ~= 0 or i + 3 + n > #ARGV then
    return redis.error_reply('BAD_ITEMS:sequence at ARGV ' .. i)
  end
  groups[#groups + 1] = {ARGV[i], ARGV[i + 1], ARGV[i + 3], i + 4, n}
  i = i + 4 + n
end

-- Whether the members' `scores` (ZMSCORE) are those the peek saw (`seen`, joined by ",").
local function unchanged(scores, seen)
  for j = 1, #scores do
    if not scores[j] then return false end
  end
  return table.concat(scores, ',') == seen
end

local leases_key = k_leases(tag)
local at = tonumber(now) + lease
local token = lease_token(at)
while rcall('ZSCORE', leases_key, token) do
  at = at - 1
  token = lease_token(at)
end
local lost, counted, queues = {}, {}, {}
for _, g in ipairs(groups) do
  local seq, mirror, seen, first, n = g[1], g[2], g[3], g[4], g[5]
  local qkey = k_queue(tag, seq)
  if rcall('HGET', mirrors_key, seq) ~= mirror then
    for j = first, first + n - 1 do lost[#lost + 1] = ARGV[j] end
  elseif n > 0 then
    local ids = {unpack(ARGV, first, first + n - 1)}
    local scores = {}
    for from = 1, n, BULK do
      local part = rcall('ZMSCORE', qkey, unpack(ids, from, math.min(from + BULK - 1, n)))
      for j = 1, #part do scores[#scores + 1] = part[j] end
    end
    local leased = {}
    -- (A lease score has a ".": due times are whole ms.)
    if unchanged(scores, seen) and not string.find(seen, '.', 1, true) then
      for j = 1, n do
        leased[#leased + 1] = token
        leased[#leased + 1] = ids[j]
      end
    else
      local was = {}
      for score in string.gmatch(seen, '[^,]+') do was[#was + 1] = score end
      for j = 1, n do
        local score, id = scores[j], ids[j]
        -- The score as Redis prints it; the numbers decide when the text differs.
        if score and (score == was[j] or tonumber(score) == tonumber(was[j])) then
          local send = true
          if is_leased(score) then
            local ekey = k_enrollment(tag, id)
            local e = to_table(rcall('HGETALL', ekey))
            -- (Or held by its task: includes/tasks.lua.)
            local live = e['st'] == 'active' or e['pr'] == 'awaiting_task'
            send = live and count_unknown(id, e, ekey, tonumber(e['i']), now)
            if send then
              counted[#counted + 1] = id
              counted[#counted + 1] = e['a']
            end
          end
          if send then
            leased[#leased + 1] = token
            leased[#leased + 1] = id
          else
            lost[#lost + 1] = id
          end
        else
          lost[#lost + 1] = id
        end
      end
    end
    zadd_chunked(qkey, leased)
    if #leased > 0 then queues[#queues + 1] = seq end
    set_head(heads_key, seq, qkey)
  end
end
if #queues > 0 then
  rcall('ZADD', leases_key, token, token)
  rcall('HSET', k_lease_owners(tag), token, worker .. ' ' .. table.concat(queues, ','))
end
return {token, lost, counted}
