-- Shared by every script that changes an enrollment: status moves keep the listing
-- indexes, the per-sequence counters and the contact's active-enrollment field in step,
-- and each change appends its event to the shard's outbox in the same script.
-- Expects: rcall, tag (the shard's hash tag), heads_key (the shard's heads), outbox_key,
-- and the generated k_* helpers.
-- @include heads
-- @include stats

local TERMINAL = {completed = true, cancelled = true}

local function to_table(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function emit(etype, tenant, now, data)
  return rcall('XADD', outbox_key, '*', 'type', etype, 'tenant', tenant, 'at', now,
    'data', cjson.encode(data))
end

-- An event about one message (step `step` of enrollment `id`): `data` (a table) with the
-- ids that name it added.
local function emit_message(etype, tenant, now, data, id, cid, seq, step)
  data['id'] = id
  data['enrollment_id'] = id
  data['contact_id'] = cid
  data['sequence_id'] = seq
  data['step'] = tonumber(step)
  return emit(etype, tenant, now, data)
end

-- The hot paths' events (enroll's `created`, advance's every event) go out batched:
-- one outbox entry per (tenant, type) of a call, holding up to OUTBOX_ITEMS (scripts.py,
-- in every script's prelude) events' data as a JSON array in `items`
-- (store/outbox.py `Entry.events`), appended when full and at the end of the call
-- (`flush_batched`). One XADD, read, ack and delete per entry instead of per event; each
-- event's id is still derived from the entry (event_ids.py). A call touches an enrollment
-- once, writing at most a step's event and then the enrollment's (sent then completed,
-- failed then cancelled): step events (`sequence.step.*`) leave before any other batch
-- does, so the events of one enrollment keep their order.
local batched, batched_order, step_batches = {}, {}, {}
-- Set by a script (advance) whose every enrollment_event goes out batched.
local batch_events = false

local function flush_one(b, now)
  -- The brackets go on the end items, not around the joined text: every Lua string is
  -- hashed and copied whole when made, and the joined text is the batch's every event.
  local items = b.items
  items[1] = '[' .. items[1]
  items[#items] = items[#items] .. ']'
  rcall('XADD', outbox_key, '*', 'type', b.etype, 'tenant', b.tenant, 'at', now,
    'items', table.concat(items, ','))
  b.items = {}
end

local function flush_steps(now)
  for _, b in ipairs(step_batches) do
    if #b.items > 0 then flush_one(b, now) end
  end
end

-- `data` is the event's data already as JSON text. (Batches by type, then tenant: no key
-- string to build per event.)
local function emit_batched(etype, tenant, now, data)
  local of_type = batched[etype]
  if not of_type then
    of_type = {}
    batched[etype] = of_type
  end
  local b = of_type[tenant]
  if not b then
    b = {etype = etype, tenant = tenant, items = {},
         step = string.sub(etype, 1, 14) == 'sequence.step.'}
    of_type[tenant] = b
    if b.step then
      step_batches[#step_batches + 1] = b
    else
      batched_order[#batched_order + 1] = b
    end
  end
  local items = b.items
  items[#items + 1] = data
  if #items >= OUTBOX_ITEMS then
    if not b.step then flush_steps(now) end
    flush_one(b, now)
  end
end

local function flush_batched(now)
  flush_steps(now)
  for _, b in ipairs(batched_order) do
    if #b.items > 0 then flush_one(b, now) end
  end
end

-- Makes the first enrollment waiting for a contact's exclusive one (defined below).
local promote_waiting

-- Move enrollment `id` (hash already read into `e`) from its status to `new_status`. An
-- active enrollment is listed by its queue entry, which `schedule` and `unschedule` keep:
-- only the other statuses have an index of their own.
local function move_status(id, e, new_status, now)
  local seq = e['s']
  local old = e['st']
  if old then
    if old ~= 'active' then rcall('ZREM', k_status_index(tag, seq, old), id) end
    rcall('HINCRBY', k_counts(tag, seq), old, -1)
  end
  if new_status ~= 'active' then rcall('ZADD', k_status_index(tag, seq, new_status), 0, id) end
  rcall('HINCRBY', k_counts(tag, seq), new_status, 1)
  e['st'] = new_status
  e['ua'] = now
  rcall('HSET', k_enrollment(tag, id), 'st', new_status, 'ua', now)
  if TERMINAL[new_status] then
    local ckey = k_contact(tag, e['c'])
    local live, exclusive = unpack(rcall('HMGET', ckey, 'e:' .. seq, 'ex'))
    if live == id then rcall('HDEL', ckey, 'e:' .. seq) end
    -- `x:<sequence>`: the contact's last ended enrollment there (GET /enrollments by
    -- contact lists its live ones, `e:`, and these; reenroll rules read it); never a hash
    -- for a deleted contact.
    if rcall('EXISTS', ckey) == 1 then
      rcall('HSET', ckey, 'x:' .. seq, id)
      -- If this was its live exclusive enrollment (`ex`), the first enrollment waiting
      -- for it is made now, in this script.
      if exclusive == id then
        rcall('HDEL', ckey, 'ex')
        promote_waiting(e['c'], now)
      end
    end
  end
end

-- Step conditions (seqd/conditions.py) read what became of earlier steps from `o`: one
-- letter per step, "-" where nothing was recorded. A reply's mark ("r") stays: a receipt
-- after it changes nothing a condition reads. So does NOT_RUN: a step the enrollment
-- passed before it moved to a version of the steps that has it there (syncSequence).
local NOT_RUN = 'x'
local function set_outcome(ekey, step, letter)
  local o = rcall('HGET', ekey, 'o') or ''
  local at = tonumber(step) + 1
  local was = string.sub(o, at, at)
  if was == 'r' or was == NOT_RUN then return end
  if #o < at - 1 then o = o .. string.rep('-', at - 1 - #o) end
  rcall('HSET', ekey, 'o', string.sub(o, 1, at - 1) .. letter .. string.sub(o, at + 1))
end

-- The index in `o` of the facts of step `step` as sent (its index then), or nil: it
-- differs from `step` for a step sent before the enrollment moved to another version of
-- the steps (`mv`, written by syncSequence's carry_facts).
local function fact_index(ekey, step)
  local mv = rcall('HGET', ekey, 'mv')
  if not mv then return step end
  local j = 0
  for t in string.gmatch(mv, '[^,]+') do
    if j == tonumber(step) then
      if tonumber(t) < 0 then return nil end
      return tonumber(t)
    end
    j = j + 1
  end
  return step
end

-- A claim leases a due member by moving its score to half a ms before the lease ends
-- (due again at `at`). Due times are whole ms, so the half marks the member as claimed
-- and not settled yet (when it comes due again, its worker died mid-send), and the score
-- is the claim's fencing token: `advance` applies a claim's outcome only while the member
-- still has that score. Every other write of the member (the next step, a retry, a
-- transition) gives it another score or takes it out.
local function lease_token(at)
  return string.format('%d.5', at - 1)
end

local function is_leased(score)
  return score ~= nil and score ~= false and string.find(score, '.', 1, true) ~= nil
end

-- Put an enrollment of sequence `seq` in its queue at `score` (a due time or a lease
-- token), lowering the sequence's head if that is now the earliest: a head is never later
-- than its queue's first score (claimDue sets it back to exactly that).
local function schedule(id, seq, score)
  rcall('ZADD', k_queue(tag, seq), score, id)
  rcall('ZADD', heads_key, 'LT', score, seq)
end

-- Take an enrollment out of its queue: this also fences any claim in flight, whose lease
-- score is gone. (The head may now be early, which costs a claim a look, never a step.)
local function unschedule(id, e)
  rcall('ZREM', k_queue(tag, e['s']), id)
end

-- Set sequence `seq`'s head as its mirror's `status` says: its queue's first score while
-- it is active or archived (claims cancel an archived one's steps), none while it is
-- paused, draft or gone, so its queue waits untouched.
local function refresh_head(seq, status)
  if status == 'active' or status == 'archived' then
    set_head(heads_key, seq, k_queue(tag, seq))
  else
    rcall('ZREM', heads_key, seq)
  end
end

-- The hash fields an event carries: those the API's enrollment is made of (store/event_types.py
-- turns them into one); the dispatcher's own (a, sm, p<step>, ...) stay out.
local EVENT_FIELDS = {'s', 'c', 'st', 'i', 'n', 'ua', 'md', 'pr', 'pv', 'ra', 'cr', 'ca', 'z', 'dr',
  'cq', 'gl', 'sv'}

local function enrollment_event(etype, id, e, now, extra)
  local fields = {}
  for _, f in ipairs(EVENT_FIELDS) do fields[f] = e[f] end
  local data = {id = id, fields = fields}
  if extra then for k, v in pairs(extra) do data[k] = v end end
  if batch_events then
    emit_batched(etype, e['t'], now, cjson.encode(data))
  else
    emit(etype, e['t'], now, data)
  end
end

-- The first waiting enrollment of contact `cid` (exclusive_waiting, in request order)
-- whose sequence is still active or paused and has no live enrollment of the contact is
-- made, due its first step's wait from now; the ones before it are dropped. It becomes
-- the contact's live exclusive enrollment (`ex`).
promote_waiting = function(cid, now)
  local ckey, wkey = k_contact(tag, cid), k_exclusive_waiting(tag, cid)
  while true do
    local raw = rcall('LPOP', wkey)
    if not raw then return end
    local w = cjson.decode(raw)
    rcall('HDEL', ckey, 'w:' .. w.s)
    local status = string.match(rcall('HGET', k_mirrors(tag), w.s) or '', '^([^:]+)')
    -- (A paused sequence takes it: its queue waits for the resume.)
    if (status == 'active' or status == 'paused') and not rcall('HGET', ckey, 'e:' .. w.s) then
      local due = string.format('%d', tonumber(now) + w.w)
      local e = {t = w.t, s = w.s, c = cid, st = 'active', i = '0', n = due, ua = now}
      local fields = {'t', w.t, 's', w.s, 'c', cid, 'st', 'active', 'i', '0', 'n', due, 'ua', now}
      if w.md ~= '' then
        fields[#fields + 1] = 'md'; fields[#fields + 1] = w.md; e['md'] = w.md
      end
      if w.v ~= '' then
        fields[#fields + 1] = 'sv'; fields[#fields + 1] = w.v; e['sv'] = w.v
      end
      rcall('HSET', k_enrollment(tag, w.id), unpack(fields))
      rcall('HSET', ckey, 'e:' .. w.s, w.id, 'ex', w.id)
      rcall('HINCRBY', k_counts(tag, w.s), 'active', 1)
      rcall('ZADD', k_queue(tag, w.s), due, w.id)
      stats_count(w.s, 0, NO_VARIANT, 'scheduled', now)
      -- (A paused sequence has no head: its resume sets it.)
      if status == 'active' then rcall('ZADD', heads_key, 'LT', due, w.s) end
      enrollment_event('sequence.enrollment.created', w.id, e, now, {queued = true})
      return
    end
  end
end

-- A pause's fields: its reason, the variable it waits for, when it ends by itself.
local function clear_pause(ekey, e)
  rcall('HDEL', ekey, 'pr', 'pv', 'ra'); e['pr'] = nil; e['pv'] = nil; e['ra'] = nil
end

-- A paused enrollment active again, due at max(next_run_at, now); `extra` (optional) adds
-- fields to its `resumed` event (the reason of a pause that ended by itself).
local function resume(id, e, now, extra)
  local due_at = math.max(tonumber(e['n']), tonumber(now))
  clear_pause(k_enrollment(tag, id), e)
  rcall('HSET', k_enrollment(tag, id), 'n', due_at); e['n'] = tostring(due_at)
  move_status(id, e, 'active', now)
  schedule(id, e['s'], due_at)
  enrollment_event('sequence.enrollment.resumed', id, e, now, extra)
end

-- Terminal or pause transition shared by transition, syncSequence, deleteContact and the
-- dispatch scripts; `more` (optional) adds fields to the event (the error, the variable,
-- the `resume_at` of a pause that ends by itself).
-- Returns nil on success, else the current status.
local function finish(id, e, new_status, reason, now, more)
  local st = e['st']
  if TERMINAL[st] or (new_status == 'paused' and st ~= 'active') then return st end
  unschedule(id, e)
  local ekey = k_enrollment(tag, id)
  if new_status == 'cancelled' then
    rcall('HSET', ekey, 'cr', reason); e['cr'] = reason
    clear_pause(ekey, e)
  elseif new_status == 'completed' then
    rcall('HSET', ekey, 'ca', now); e['ca'] = now
    clear_pause(ekey, e)
  elseif new_status == 'paused' then
    rcall('HSET', ekey, 'pr', reason); e['pr'] = reason
    -- The variable a missing_variable pause waits for, shown on the enrollment.
    if more and more.variable then rcall('HSET', ekey, 'pv', more.variable); e['pv'] = more.variable end
    -- A pause that ends by itself (out_of_office) waits in its queue at its end: the claim
    -- that finds it due resumes it (claimDue), so no other poller watches the time.
    if more and more.resume_at then
      rcall('HSET', ekey, 'ra', more.resume_at); e['ra'] = tostring(more.resume_at)
    end
  end
  move_status(id, e, new_status, now)
  if new_status ~= 'paused' then stats_credit(e, new_status, now) end
  if e['ra'] then schedule(id, e['s'], e['ra']) end
  local extra = nil
  if new_status == 'cancelled' then extra = {cancel_reason = reason}
  elseif new_status == 'paused' then extra = {paused_reason = reason} end
  if more then
    extra = extra or {}
    for k, v in pairs(more) do extra[k] = v end
  end
  enrollment_event('sequence.enrollment.' .. new_status, id, e, now, extra)
  return nil
end
