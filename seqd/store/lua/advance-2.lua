--[[ Settle a batch of claimed steps of one shard: what each send did to its enrollment.

  An item applies only while its token (the lease score claimDue gave the member) is
  still the member's score in its sequence's queue: a later claim, the next step, a retry
  and every transition give it another score or take it out, so a worker whose lease ran
  out (and whose step someone else claimed) or whose enrollment was paused or cancelled
  meanwhile cannot move it. One exception keeps the record true: a step that WAS sent
  while a transition happened (a reply paused the enrollment mid-send) is still recorded
  on the enrollment, which stays where the transition put it.

  KEYS[1] heads   ZSET   the shard's sequence heads
  KEYS[2] outbox  STREAM
  ARGV[1] tag
  ARGV[2] now           ms
  ARGV[3] max_attempts
  ARGV[4] items         JSON array of objects, each:
    id, token, step, kind ("sms"|"email"), at (ms the send ended), outcome, and by outcome:
    sent      provider_id (optional), wait: ms from `at` to the next step, -1 after the last,
              variant and sender (optional: recorded as `v<step>`, `r<step>`)
    skipped   reason, wait (as for sent): the step is passed over without a send
    retry     error, delay: ms until the next attempt
    failed    error                      -> cancelled, cancel_reason failed
    pause     reason, variable (optional), error (optional)
    cancel    reason (opted_out, bounced, ...), error (optional)
    complete  (the step is past the sequence's end)
    defer     until (ms), reason, zone (optional): see store/settles.py Defer
    task      wait (as for sent), task_id, title, assignee, due_in, blocking, on_timeout:
              a task step, settled as its task says (includes/tasks.lua `settle_task`)
    release   started (bool), delay (optional ms): due again after `delay` (now when
              absent), no attempt counted; due again as an unsettled claim (a lease
              score) when the send had started, since the provider may then have it
    and optionally seq: the claimed sequence (`s`; else read here), and pin: the sender
    a sticky rotation pins the contact to (KIND_SENDER_FIELD[kind]), written whatever the
    outcome while the hash exists
  ARGV[5]   optional, the groups of the passed steps that follow, as a JSON array of
            [token, seq, step, kind, outcome (sent|skipped), tenant, attempts ("" for
            none), wait (ms from the send to the next step, >= 0; -1: the sequence's last
            step, whose steps complete their enrollments), and optionally the A/B
            variant its sent steps were sent as ("" for none), the sender its steps pin
            their contacts to (as an item's pin; null for none) and the sender (of a pool)
            its sent steps were sent from (null for none)]: what the steps of one claim
            share, written once per call (store/settles.py PASSED_GROUP)
  ARGV[6..] the passed steps, the hot path: a sent or skipped step with a step after it,
            of a claim the caller read, five values each (PASSED_STEP): id, group (its
            place in ARGV[5], from 1), due (the next step's due time, ms; a last step's:
            when it was sent), detail (provider id of a sent step, reason of a skipped one;
            "" for none), and its event data (JSON object text; "" for a last step, whose
            events complete_read spells from the hash). The caller builds the event from what claimDue read under
            the same token (`s c md` never change, `t` and `a` change only under a claim)
            and this call's `now` (`step_event`): Redis, the bottleneck of a burst, then
            reads nothing of the hash and builds no text. (Values rather than JSON: a
            decoded array is a table per step, and decoding was the script's largest cost
            after the writes.) Passed steps are settled after the items.

  Returns {applied, late, {stale id, ...}}: late = sent steps recorded on an enrollment a
  transition had taken over; stale = items ignored.
  Errors: BAD_ITEMS:<which> (a malformed item or passed step; nothing is written)
]]
local rcall = redis.call
local heads_key, outbox_key = KEYS[1], KEYS[2]
local tag, now, max_attempts = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- @include enrollment
-- @include dispatch
-- @include settles
-- @include tasks
-- Every enrollment event of the call goes out batched (enrollment.lua `emit_batched`): a
-- last step's `sent` and `completed` included, which would otherwise be an outbox entry,
-- an event log payload key and a reader's turn each.
batch_events = true

-- Every item is checked before anything is written: a script error does not roll back.
local ok, items = pcall(cjson.decode, ARGV[4])
if not ok or type(items) ~= 'table' or (#items == 0 and next(items) ~= nil) then
  return redis.error_reply('BAD_ITEMS:not a JSON array')
end
-- (NEEDS: outcome -> the field it needs and that field's type, from store/settles.py.)
for n, it in ipairs(items) do
  if type(it) ~= 'table' then return redis.error_reply('BAD_ITEMS:item ' .. n) end
  local need = NEEDS[it.outcome]
  if type(it.id) ~= 'string' or type(it.token) ~= 'string' or type(it.step) ~= 'number'
    or type(it.at) ~= 'number' or need == nil or (need[1] and type(it[need[1]]) ~= need[2])
  then
    return redis.error_reply('BAD_ITEMS:item ' .. n)
  end
  if type(it.provider_id) ~= 'string' then it.provider_id = nil end
  if type(it.variant) ~= 'string' then it.variant = nil end
  if type(it.sender) ~= 'string' or it.sender == '' then it.sender = nil end
  if type(it.seq) ~= 'string' then it.seq = nil end
  if type(it.pin) ~= 'string' or not KIND_SENDER_FIELD[it.kind] then it.pin = nil end
  if it.outcome == 'defer' then
    if it['until'] % 1 ~= 0 then return redis.error_reply('BAD_ITEMS:item ' .. n) end
    if type(it.reason) ~= 'string' then it.reason = 'window' end
  end
  if it.outcome == 'task' and (type(it.task_id) ~= 'string' or it.task_id == '') then
    return redis.error_reply('BAD_ITEMS:item ' .. n)
  end
end
-- Passed step n's values are ARGV[P_WIDTH * n + SKIP + P_ID ..] (PASSED_STEP): they start
-- at ARGV[6].
local SKIP = 5 - P_WIDTH
-- (of_group: group place -> the places of its passed steps.)
local groups, passed, group_of, dues, of_group = {}, 0, {}, {}, {}
if #ARGV >= 5 then
  local decoded, got = pcall(cjson.decode, ARGV[5])
  if not decoded or type(got) ~= 'table' or (#got == 0 and next(got) ~= nil) then
    return redis.error_reply('BAD_ITEMS:passed groups not a JSON array')
  end
  groups, passed = got, (#ARGV - 5) / P_WIDTH
  if passed % 1 ~= 0 then
    return redis.error_reply('BAD_ITEMS:passed steps not ' .. P_WIDTH .. ' values each')
  end
end
-- A step's index as the texts its writes and events spell (its own, the next one's, its
-- provider id's, variant's and sender's fields): made once per group, since a number
-- joined to a string costs Lua a sprintf.
local function step_texts(step)
  local text = string.format('%d', step)
  return {step = text, next = string.format('%d', step + 1), p = 'p' .. text, v = 'v' .. text,
          r = 'r' .. text}
end
-- Sequence id -> its contact fields (`e:<seq>` live, `x:<seq>` ended), made once per call.
local seq_fields = {}
local function contact_fields_of(seq)
  local f = seq_fields[seq]
  if not f then
    f = {live = 'e:' .. seq, ended = 'x:' .. seq}
    seq_fields[seq] = f
  end
  return f
end
for n, g in ipairs(groups) do
  -- (null: no pin, or no sender, where the other follows)
  if type(g) == 'table' and g[G_PIN] == cjson.null then g[G_PIN] = nil end
  if type(g) == 'table' and g[G_SENDER] == cjson.null then g[G_SENDER] = nil end
  if type(g) ~= 'table' or type(g[G_TOKEN]) ~= 'string' or g[G_TOKEN] == ''
    or type(g[G_SEQ]) ~= 'string' or g[G_SEQ] == '' or type(g[G_STEP]) ~= 'number'
    or type(g[G_KIND]) ~= 'string' or (g[G_OUTCOME] ~= 'sent' and g[G_OUTCOME] ~= 'skipped')
    or type(g[G_TENANT]) ~= 'string' or g[G_TENANT] == '' or type(g[G_ATTEMPTS]) ~= 'string'
    or type(g[G_WAIT]) ~= 'number' or g[G_WAIT] < -1
    or (g[G_VARIANT] ~= nil and type(g[G_VARIANT]) ~= 'string')
    or (g[G_PIN] ~= nil and (type(g[G_PIN]) ~= 'string' or g[G_PIN] == ''
      or not KIND_SENDER_FIELD[g[G_KIND]]))
    or (g[G_SENDER] ~= nil and (type(g[G_SENDER]) ~= 'string' or g[G_SENDER] == '')) then
    return redis.error_reply('BAD_ITEMS:passed group ' .. n)
  end
  -- What the group's steps write: `i` after the step, the provider id's field, and whether
  -- a step with a provider id writes exactly {i ua n p<step> [sm]} (`plain`: no attempts
  -- to reset), spelled as one table constructor on the hot path.
  g.texts = step_texts(g[G_STEP])
  g.next, g.pfield = g.texts.next, g.texts.p
  g.sent = g[G_OUTCOME] == 'sent'
  g.plain = g.sent and (g[G_ATTEMPTS] == '' or g[G_ATTEMPTS] == '0')
  g.sms = g[G_KIND] == 'sms'
  g.queue = k_queue(tag, g[G_SEQ])
  g.etype = g.sent and 'sequence.step.sent' or 'sequence.step.skipped'
  g.passed = 0  -- its steps passed on the hot path, counted once at the end
  g.last = g[G_WAIT] == -1
  -- The A/B variant its steps were sent as and the sender they were sent from (optional),
  -- recorded as `v<step>` and `r<step>`.
  g.variant = g.sent and g[G_VARIANT] ~= '' and g[G_VARIANT] or nil
  g.vfield = g.texts.v
  g.sender = g.sent and g[G_SENDER] or nil
  g.rfield = g.texts.r
  -- The sender its steps pin their contacts to, in the kind's field (an item's pin).
  g.pin, g.pinfield = g[G_PIN], KIND_SENDER_FIELD[g[G_KIND]]
end
-- A group's place as the caller spells it ("1", "2", ...) -> the place: a table lookup
-- per step where tonumber would parse the text.
local place_of = {}
for n = 1, #groups do place_of[string.format('%d', n)] = n end
for n = 1, passed do
  local b = P_WIDTH * n + SKIP
  local group, due = place_of[ARGV[b + P_GROUP]], tonumber(ARGV[b + P_DUE])
  if not due or due % 1 ~= 0 or ARGV[b + P_ID] == '' or not groups[group]
    or (ARGV[b + P_EVENT] == '') ~= (groups[group] and groups[group].last)
  then
    return redis.error_reply('BAD_ITEMS:passed step ' .. n)
  end
  group_of[n], dues[n] = group, due
  local ns = of_group[group]
  if not ns then ns = {}; of_group[group] = ns end
  ns[#ns + 1] = n
end

-- The hash writes of a passed step (sent or skipped), as one HSET's field list: `i` becomes
-- `next`, `n` the next step's due time (text; none after the last step), the provider id
-- goes in field `pfield`. Attempts are reset only where a retry left some: an absent `a`
-- reads as 0 and costs no memory.
local function step_writes(next, due_at, sent, pfield, provider_id, kind, attempts, sms_sent)
  local fields = {'i', next, 'ua', now}
  if attempts and attempts ~= '0' and attempts ~= '' then
    fields[#fields + 1] = 'a'; fields[#fields + 1] = '0'
  end
  if due_at then
    fields[#fields + 1] = 'n'; fields[#fields + 1] = due_at
  end
  if sent then
    if provider_id then
      fields[#fields + 1] = pfield; fields[#fields + 1] = provider_id
    end
    if kind == 'sms' and not sms_sent then
      fields[#fields + 1] = 'sm'; fields[#fields + 1] = '1'
    end
  end
  return fields
end

-- step_writes for item `it` (a table: the general path); also returns the next step's due
-- time (text; nil after the last step).
local function item_writes(it, attempts, sms_sent)
  local due_at = it.wait >= 0 and string.format('%d', it.at + it.wait) or nil
  local fields = step_writes(string.format('%d', it.step + 1), due_at, it.outcome == 'sent',
    'p' .. it.step, it.provider_id, it.kind, attempts, sms_sent)
  if it.variant and it.outcome == 'sent' then
    fields[#fields + 1] = 'v' .. it.step; fields[#fields + 1] = it.variant
  end
  if it.sender and it.outcome == 'sent' then
    fields[#fields + 1] = 'r' .. it.step; fields[#fields + 1] = it.sender
  end
  return fields, due_at
end

-- The step was sent (or skipped): move the enrollment past it, with its event. The next
-- step becomes the current one, counted `scheduled` here and only here (once per
-- enrollment and step: a deferral, retry, pause or resume re-times it, never counts it).
-- Returns the next step's due time, or nil after the last step.
local function pass_step(id, e, it, ekey)
  local fields, due_at = item_writes(it, e['a'], e['sm'])
  rcall('HSET', ekey, unpack(fields))
  for k = 1, #fields, 2 do e[fields[k]] = fields[k + 1] end
  stats_step(e, it.step, it.outcome, now)
  if due_at then stats_count(e['s'], it.step + 1, NO_VARIANT, 'scheduled', now) end
  if it.outcome ~= 'sent' then set_outcome(ekey, it.step, 'k') end
  if it.outcome == 'sent' then
    enrollment_event('sequence.step.sent', id, e, now,
      {step = it.step, kind = it.kind, provider_id = it.provider_id or cjson.null, sent_at = it.at,
       variant = it.variant})
  else
    enrollment_event('sequence.step.skipped', id, e, now,
      {step = it.step, kind = it.kind, reason = it.reason})
  end
  return due_at
end

local applied, late, stale = 0, 0, {}

-- The fast path's ZADDs, per sequence, written at the end in chunks (one command per
-- BULK members) with one ZADD of the sequence's head, while every id of the call is
-- distinct, as in any batch of one claim: no item then touches another's member, so
-- writing late is the same as writing at once. A call that repeats an id writes each at
-- once.
local zadds, earliest = {}, {}
do
  local distinct = {}
  for _, it in ipairs(items) do
    if distinct[it.id] then zadds = nil; break end
    distinct[it.id] = true
  end
  for n = 1, passed do
    local id = ARGV[P_WIDTH * n + SKIP + P_ID]
    if not zadds or distinct[id] then zadds = nil; break end
    distinct[id] = true
  end
end

-- `due` = tonumber(due_at), where the caller has it.
local function schedule_next(seq, due_at, id, due)
  if zadds then
    due = due or tonumber(due_at)
    local args = zadds[seq]
    if not args then
      args = {}
      zadds[seq] = args
      earliest[seq] = due
    elseif due < earliest[seq] then
      earliest[seq] = due
    end
    args[#args + 1] = due_at
    args[#args + 1] = id
  else
    schedule(id, seq, due_at)
  end
end

-- A step's kind as JSON, for the kinds there are (any other is encoded).
local KIND_JSON = {sms = '"sms"', email = '"email"'}

-- The hot path: passed step `n` (id `id`) of group `g` whose claim still holds. One write
-- of each structure and the step's event as the caller built it, batched with the call's
-- others (`emit_batched`), with no read. `sm` is written on every SMS step (it is there
-- after the first). A live hash always has `i` and `n`: an HSET that adds every field it
-- writes found no hash (deleted by hand), and is undone; returns false then (the general
-- path decides).
local function pass_built(n, id, g, ekey)
  local b = P_WIDTH * n + SKIP
  local due_at, detail = ARGV[b + P_DUE], ARGV[b + P_DETAIL]
  local fields, added
  if g.plain and detail ~= '' and not (g.variant or g.sender or g.pin) then
    -- (The usual step: its HSET spelled out, with no table to build and unpack.)
    if g.sms then
      added = rcall('HSET', ekey, 'i', g.next, 'ua', now, 'n', due_at, g.pfield, detail, 'sm', '1')
        == 5
    else
      added = rcall('HSET', ekey, 'i', g.next, 'ua', now, 'n', due_at, g.pfield, detail) == 4
    end
  elseif g.plain and detail ~= '' then
    if g.sms then
      fields = {'i', g.next, 'ua', now, 'n', due_at, g.pfield, detail, 'sm', '1'}
    else
      fields = {'i', g.next, 'ua', now, 'n', due_at, g.pfield, detail}
    end
  else
    fields = step_writes(g.next, due_at, g.sent, g.pfield, detail ~= '' and detail or nil,
      g[G_KIND], g[G_ATTEMPTS], nil)
  end
  if fields then
    if g.variant then
      fields[#fields + 1] = g.vfield; fields[#fields + 1] = g.variant
    end
    if g.sender then
      fields[#fields + 1] = g.rfield; fields[#fields + 1] = g.sender
    end
    if g.pin then
      fields[#fields + 1] = g.pinfield; fields[#fields + 1] = g.pin
    end
    added = rcall('HSET', ekey, unpack(fields)) == #fields / 2
  end
  if added then
    rcall('DEL', ekey)
    return false
  end
  if not g.sent then set_outcome(ekey, g[G_STEP], 'k') end
  schedule_next(g[G_SEQ], due_at, id, dues[n])
  emit_batched(g.etype, g[G_TENANT], now, ARGV[b + P_EVENT])
  g.passed = g.passed + 1
  return true
end

-- Passed step `n` as an item, for the general path (it was sent `wait` before it is due).
local function passed_item(n, id, g)
  local sent, detail = g.sent, ARGV[P_WIDTH * n + SKIP + P_DETAIL]
  if detail == '' then detail = nil end
  return {id = id, token = g[G_TOKEN], seq = g[G_SEQ], step = g[G_STEP], kind = g[G_KIND],
          outcome = g[G_OUTCOME], at = g.last and dues[n] or dues[n] - g[G_WAIT],
          wait = g[G_WAIT],
          provider_id = sent and detail or nil, reason = (not sent) and detail or nil,
          variant = g.variant, pin = g.pin, sender = g.sender}
end

-- A sent or skipped item with a step after it, on an enrollment whose claim still holds:
-- as the hot path, with one read of the fields its event needs and its JSON spelled out
-- here (its `fields` are those the API's enrollment is made of).
-- Returns false, having left nothing written, when the hash is gone.
local function pass_read(id, ekey, it, seq)
  local h = rcall('HMGET', ekey, 'a', 'sm', 't', 's', 'c', 'md', 'sv')
  if not (h[3] and h[4] and h[5]) then return false end
  local sent = it.outcome == 'sent'
  local fields, due_at = item_writes(it, h[1], h[2])
  if it.pin then
    fields[#fields + 1] = KIND_SENDER_FIELD[it.kind]; fields[#fields + 1] = it.pin
  end
  local step, next_step = it.step, fields[2]
  local tail
  if sent then
    local pid = it.provider_id and cjson.encode(it.provider_id) or 'null'
    tail = ',"provider_id":' .. pid .. ',"sent_at":' .. string.format('%d', it.at)
      .. (it.variant and (',"variant":' .. cjson.encode(it.variant)) or '')
  else
    tail = it.reason and (',"reason":' .. cjson.encode(it.reason)) or ''
  end
  rcall('HSET', ekey, unpack(fields))
  if not sent then set_outcome(ekey, step, 'k') end
  schedule_next(seq, due_at, id)
  stats_count(seq, step, sent and it.variant or NO_VARIANT, it.outcome, now)
  stats_count_sender(seq, sent and it.sender or nil, it.outcome, now)
  stats_count(seq, step + 1, NO_VARIANT, 'scheduled', now)
  emit_batched(sent and 'sequence.step.sent' or 'sequence.step.skipped', h[3], now,
    step_event_json(id, h[4], h[5], next_step, due_at, now, h[6] and cjson.encode(h[6]) or '',
      h[7] and cjson.encode(h[7]) or '', step, KIND_JSON[it.kind] or cjson.encode(it.kind),
      tail))
  return true
end

-- What the call's completions (complete_read) count, written once per call at the end:
-- per sequence, the enrollments completed (moved from `active` in its counts, listed in
-- its completed index) and the stats fields with their increments.
local completed, completed_stats = {}, {}

local function tally_stat(seq, field)
  local of_seq = completed_stats[seq]
  if not of_seq then of_seq = {}; completed_stats[seq] = of_seq end
  of_seq[field] = (of_seq[field] or 0) + 1
end

-- The hash fields complete_read reads: C_* first (what its writes and checks need), then
-- the event fields (EVENT_FIELDS) it does not write, from C_REST on. A completion writes
-- `i`, `ua`, `ca` and `st` whatever they were.
local C_S, C_C, C_ST, C_N, C_T, C_A, C_SM, C_V, C_R = 1, 2, 3, 4, 5, 6, 7, 8, 9
local C_REST = 10
local COMPLETE_FIELDS = {'s', 'c', 'st', 'n', 't', 'a', 'sm', 'v', 'r'}
local WRITTEN = {s = true, c = true, st = true, n = true, i = true, ua = true, ca = true}
for _, f in ipairs(EVENT_FIELDS) do
  if not WRITTEN[f] then COMPLETE_FIELDS[#COMPLETE_FIELDS + 1] = f end
end
-- A pause's fields (finish clears them): the general path decides where one is set.
local PAUSE_FIELD = {pr = true, pv = true, ra = true}

-- An enrollment's last step sent (or skipped), its claim holding: what settle's pass_step
-- and finish(completed) write, with two reads (the hash's needed fields, the contact's
-- live fields) instead of the whole hash, one HSET of the hash, and its counts, stats and
-- completed index written once per call (the end of the script). Returns false, having
-- written nothing, where the general path must decide: the hash gone or not active, a
-- pause's fields on it, the step credited with the completion not this one (no provider
-- id and an earlier step sent), or an exclusive enrollment whose end makes a waiting one.
-- `t`: the step's texts (step_texts); `at`: when it was sent (ms).
local function complete_read(id, ekey, seq, step, t, kind, sent, detail, at, variant, sender,
    pin)
  COMPLETE_FIELDS[C_V], COMPLETE_FIELDS[C_R] = t.v, t.r
  local h = rcall('HMGET', ekey, unpack(COMPLETE_FIELDS))
  if h[C_ST] ~= 'active' or not (h[C_T] and h[C_S] and h[C_C] and h[C_N]) then
    return false
  end
  -- The event fields that were there and stay: JSON text, each after a comma.
  local rest = ''
  for k = C_REST, #COMPLETE_FIELDS do
    local v = h[k]
    if v then
      local f = COMPLETE_FIELDS[k]
      if PAUSE_FIELD[f] then return false end
      rest = rest .. ',"' .. f .. '":' .. cjson.encode(v)
    end
  end
  local outcome = sent and 'sent' or 'skipped'
  local pid = sent and detail or nil
  if not pid then
    -- The completion is credited to the highest step with a provider id (credit_step),
    -- this one when there is none.
    local pfields = {}
    for j = 0, step do pfields[#pfields + 1] = 'p' .. j end
    local got = rcall('HMGET', ekey, unpack(pfields))
    for j = 1, step do
      if got[j] then return false end
    end
  end
  local ckey = k_contact(tag, h[C_C])
  local cf = contact_fields_of(seq)
  local live, exclusive = unpack(rcall('HMGET', ckey, cf.live, 'ex'))
  if exclusive == id then return false end
  local next = t.next
  local writes = step_writes(next, nil, sent, t.p, pid, kind, h[C_A], h[C_SM])
  local sent_variant = sent and variant or nil
  if sent_variant then
    writes[#writes + 1] = t.v; writes[#writes + 1] = sent_variant
  else
    variant = h[C_V]
  end
  if sent and sender then
    writes[#writes + 1] = t.r; writes[#writes + 1] = sender
  else
    sender = h[C_R]
  end
  if pin then
    writes[#writes + 1] = KIND_SENDER_FIELD[kind]; writes[#writes + 1] = pin
  end
  writes[#writes + 1] = 'ca'; writes[#writes + 1] = now
  writes[#writes + 1] = 'st'; writes[#writes + 1] = 'completed'
  rcall('HSET', ekey, unpack(writes))
  if not sent then set_outcome(ekey, step, 'k') end
  rcall('ZREM', k_queue(tag, seq), id)
  if live == id then rcall('HDEL', ckey, cf.live) end
  if live or exclusive or rcall('EXISTS', ckey) == 1 then
    rcall('HSET', ckey, cf.ended, id)
  end
  local ids = completed[seq]
  if not ids then ids = {}; completed[seq] = ids end
  ids[#ids + 1] = id
  -- The step's outcome and the completion, both on this step (credit_step).
  local vs = t.step .. ':' .. (variant or NO_VARIANT) .. ':'
  tally_stat(seq, vs .. STAT[outcome])
  tally_stat(seq, vs .. STAT['completed'])
  if sender then
    tally_stat(seq, SENDER_MARK .. sender .. ':' .. STAT[outcome])
    tally_stat(seq, SENDER_MARK .. sender .. ':' .. STAT['completed'])
  end
  -- The events' data as enrollment_event encodes it from the hash after each write (ids
  -- and ms times written as they are, as step_event_json does).
  local common = '"s":"' .. h[C_S] .. '","c":"' .. h[C_C] .. '","i":"' .. next .. '","n":"'
    .. h[C_N] .. '","ua":"' .. now .. '"' .. rest .. '}'
  local tail
  if sent then
    tail = ',"provider_id":' .. (pid and cjson.encode(pid) or 'null') .. ',"sent_at":'
      .. string.format('%d', at)
      .. (sent_variant and (',"variant":' .. cjson.encode(sent_variant)) or '')
  else
    tail = detail and (',"reason":' .. cjson.encode(detail)) or ''
  end
  emit_batched(sent and 'sequence.step.sent' or 'sequence.step.skipped', h[C_T], now,
    '{"id":"' .. id .. '","fields":{"st":"active",' .. common .. ',"step":'
      .. t.step .. ',"kind":' .. (KIND_JSON[kind] or cjson.encode(kind))
      .. tail .. '}')
  emit_batched('sequence.enrollment.completed', h[C_T], now,
    '{"id":"' .. id .. '","fields":{"st":"completed","ca":"' .. now .. '",' .. common .. '}')
  return true
end

-- Every other item: the whole hash read, each outcome's rules; `current` = holds().
local function settle(id, ekey, it, current)
  local e = to_table(rcall('HGETALL', ekey))
  local outcome = it.outcome
  if it.pin and e['st'] then
    local field = KIND_SENDER_FIELD[it.kind]
    rcall('HSET', ekey, field, it.pin)
    e[field] = it.pin
  end
  if not current or not e['st'] then  -- (a hash deleted by hand: nothing to settle)
    if outcome == 'sent' and e['st'] and e['st'] ~= 'active' and tonumber(e['i']) == it.step
    then
      pass_step(id, e, it, ekey)
      late = late + 1
    else
      stale[#stale + 1] = id
    end
  else
    applied = applied + 1
    if outcome == 'sent' or outcome == 'skipped' then
      local due_at = pass_step(id, e, it, ekey)
      if due_at then
        schedule(id, e['s'], due_at)
      else
        finish(id, e, 'completed', '', now)
      end
    elseif outcome == 'retry' then
      local attempts = rcall('HINCRBY', ekey, 'a', 1)
      e['a'] = tostring(attempts)
      if attempts >= max_attempts then
        fail_step(id, e, it.step, it.kind, it.error, now)
      else
        local due_at = tonumber(now) + it.delay
        schedule(id, e['s'], due_at)
        enrollment_event('sequence.step.failed', id, e, now,
          {step = it.step, kind = it.kind, error = it.error, retrying = true,
           attempts = attempts, retry_at = due_at})
      end
    elseif outcome == 'failed' then
      fail_step(id, e, it.step, it.kind, it.error, now)
    elseif outcome == 'pause' then
      finish(id, e, 'paused', it.reason, now,
        {step = it.step, variable = it.variable, error = it.error})
    elseif outcome == 'cancel' then
      finish(id, e, 'cancelled', it.reason, now, {step = it.step, error = it.error})
    elseif outcome == 'complete' then
      finish(id, e, 'completed', '', now)
    elseif outcome == 'defer' then
      local due_at = string.format('%d', it['until'])
      local fields = {'n', due_at, 'ua', now, 'dr', it.step .. ':' .. it.reason}
      if type(it.zone) == 'string' and it.zone ~= '' then
        fields[#fields + 1] = 'z'; fields[#fields + 1] = it.zone
      end
      rcall('HSET', ekey, unpack(fields))
      for k = 1, #fields, 2 do e[fields[k]] = fields[k + 1] end
      schedule(id, e['s'], due_at)
      stats_count(e['s'], it.step, stats_variant(e, it.step), 'deferred', now)
      enrollment_event('sequence.step.deferred', id, e, now,
        {step = it.step, kind = it.kind, reason = it.reason, ['until'] = it['until']})
    elseif outcome == 'task' then
      settle_task(id, e, it, now, function()
        it.outcome = 'sent'
        local due_at = pass_step(id, e, it, ekey)
        if due_at then schedule(id, e['s'], due_at) else finish(id, e, 'completed', '', now) end
      end)
    elseif outcome == 'release' then
      local at = tonumber(now) + (tonumber(it.delay) or 0)
      schedule(id, e['s'], it.started and lease_token(at) or at)
    end
  end
end

for _, it in ipairs(items) do
  local id = it.id
  local ekey = k_enrollment(tag, id)
  local outcome = it.outcome
  local seq = it.seq or rcall('HGET', ekey, 's')
  local current = seq and holds(id, it.token, k_queue(tag, seq))
  if current and (outcome == 'sent' or outcome == 'skipped') and (
      (it.wait >= 0 and pass_read(id, ekey, it, seq))
      or (it.wait < 0 and zadds and complete_read(id, ekey, seq, it.step,
        step_texts(it.step), it.kind,
        outcome == 'sent', outcome == 'sent' and it.provider_id or it.reason, it.at, it.variant,
        it.sender, it.pin))) then
    applied = applied + 1
  else
    settle(id, ekey, it, current)
  end
end
-- Whether each passed step's claim holds, read per group (its steps share one token and
-- queue) with one ZMSCORE per BULK steps instead of a ZSCORE per step. Only while every id
-- of the call is distinct (`zadds`): no step then moves another's member, so reading them
-- all first is reading each right before it is settled. Else each is read in turn.
local holding
if zadds then
  holding = {}
  for gi, ns in pairs(of_group) do
    local g = groups[gi]
    local token, qkey = g[G_TOKEN], g.queue
    for from = 1, #ns, BULK do
      local upto = math.min(from + BULK - 1, #ns)
      local ids = {}
      for k = from, upto do ids[#ids + 1] = ARGV[P_WIDTH * ns[k] + SKIP + P_ID] end
      local scores = rcall('ZMSCORE', qkey, unpack(ids))
      for k = from, upto do
        local score = scores[k - from + 1]
        -- (As holds(): the numbers decide when the text differs.)
        holding[ns[k]] = score ~= false
          and (score == token or tonumber(score) == tonumber(token))
      end
    end
  end
end
for n = 1, passed do
  local id, g = ARGV[P_WIDTH * n + SKIP + P_ID], groups[group_of[n]]
  local ekey = k_enrollment(tag, id)
  local current
  if holding then current = holding[n] else current = holds(id, g[G_TOKEN], g.queue) end
  if not current then
    settle(id, ekey, passed_item(n, id, g), current)
  elseif g.last then
    local detail = ARGV[P_WIDTH * n + SKIP + P_DETAIL]
    if zadds and complete_read(id, ekey, g[G_SEQ], g[G_STEP], g.texts, g[G_KIND], g.sent,
        detail ~= '' and detail or nil, dues[n], g.variant, g.sender, g.pin) then
      applied = applied + 1
    else
      settle(id, ekey, passed_item(n, id, g), current)
    end
  elseif pass_built(n, id, g, ekey) then
    applied = applied + 1
  else
    settle(id, ekey, passed_item(n, id, g), current)
  end
end
if zadds then
  for seq, args in pairs(zadds) do
    zadd_chunked(k_queue(tag, seq), args)
    rcall('ZADD', heads_key, 'LT', string.format('%d', earliest[seq]), seq)
  end
end
for _, g in ipairs(groups) do
  if g.passed > 0 then
    stats_count(g[G_SEQ], g[G_STEP], g.variant or NO_VARIANT, g[G_OUTCOME], now, g.passed)
    stats_count_sender(g[G_SEQ], g.sender, g[G_OUTCOME], now, g.passed)
    stats_count(g[G_SEQ], g[G_STEP] + 1, NO_VARIANT, 'scheduled', now, g.passed)
  end
end
for seq, ids in pairs(completed) do
  local counts = k_counts(tag, seq)
  rcall('HINCRBY', counts, 'active', -#ids)
  rcall('HINCRBY', counts, 'completed', #ids)
  local args = {}
  for _, id in ipairs(ids) do args[#args + 1] = 0; args[#args + 1] = id end
  zadd_chunked(k_status_index(tag, seq, 'completed'), args)
end
for seq, of_seq in pairs(completed_stats) do
  for field, n in pairs(of_seq) do stats_add(seq, field, now, n) end
end
flush_batched(now)
return {applied, late, stale}
