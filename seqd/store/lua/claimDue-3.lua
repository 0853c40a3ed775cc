--[[ Peek at a shard's due steps for sending: one bounded batch, earliest sequence first.

  Nothing is leased: the dispatcher leases what it found with leasePeeked in the round trip
  right before the send, so a worker that dies holding a peek left nothing to undo. The
  sequences with something due are those whose head (heads_key) has come; each one's
  queue gives its due members, earliest first, until `limit` members were looked at. Then
  the sequence's head is set to its queue's first score (or taken out with the queue
  empty). Members that must not be sent now are settled here instead:
  - enrollment gone or not active: a stale member, dropped from the queue; but a pause
    that ends by itself (`ra`, resume_at: out_of_office) waits there until then, and is
    resumed (sequence.enrollment.resumed, reason `<paused_reason>_ended`) and due from now;
    and one a blocking task holds (paused awaiting_task: its member is the task's due
    time) is returned like an active one;
  - sequence paused or draft (or its mirror missing): its head is taken out and its queue
    waits as it is, due times and all, until syncSequence puts the head back on resume;
  - sequence archived: cancelled (sequence_archived);
  - current step past the last one (the sequence lost steps): completed;
  - a lease that ran out (its score has the half) is left alone while its lease is
    recorded: reclaimLeases decides whether its send had started. Without a record (a
    send that had started: reclaimed, or released after its send had started) the
    provider may or may not have the message: on_unknown = hold pauses it
    (delivery_unknown); resend returns it as it is, and leasePeeked counts its attempt
    (a peek may come to nothing).

  KEYS[1] heads     ZSET   the shard's sequence heads
  KEYS[2] outbox    STREAM the shard's events
  KEYS[3] mirrors HASH   sequence id -> its mirror "<status>:<version>:<steps>"
                           (store/mirrors.py; beside it the shard's `sf` hash, sequence id
                           -> "<version>:<fields>", built here from the tag)
  ARGV[1] tag
  ARGV[2] now           ms
  ARGV[3] limit         members looked at, at most
  ARGV[4] on_unknown    resend | hold
  ARGV[5..] contact fields to read for a sequence without `sf` fields at its mirror's
            version (written by a seqd from before them): the owner and what any message
            can use. A sequence's `sf` fields are what its messages use: a field the contact
            lacks costs a scan of its hash, which also holds one `e:<seq>` field per
            sequence the contact is in.

  Returns JSON text {"seen": n, "m": {sequence id: mirror}, "f": {sequence id: fields},
  "items": [item, ...]} in
  pieces: an array of its head (up to the items' "[") and each item's text, each
  item an array [id, {enrollment fields}, contact values]: the enrollment fields are those
  the dispatcher reads (store/claims.py `ClaimedEnrollment`: t s c st i n, a, md, o and the
  sender pins (kinds.py `sender_field`) where set; the
  whole hash for a lease run out) with `k` = the member's score as it was left, which
  leasePeeked checks; the contact values an array in the order of its sequence's fields
  in "f", or of ARGV[5..] for a sequence not in "f" (false where unset); seen = members
  looked at (equal to the limit: more may be due).
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, limit, hold = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == 'hold'
local contact_fields = {unpack(ARGV, 5)}
-- @include enrollment

-- sequence id -> its mirror, and its `sf` fields where they are the mirror's version
local mirrors, fields_of, states = {}, {}, {}
local function sequence_state(seq)
  local s = states[seq]
  if s == nil then
    local m = rcall('HGET', mirrors_key, seq)
    local status, version, steps = string.match(m or '', '^([^:]+):(%d+):(%d+)$')
    local read, fields = contact_fields, nil
    -- (Contacts are read only for an active sequence's steps.)
    local f = status == 'active' and rcall('HGET', k_sequence_fields(tag), seq)
    if f then
      local at, text = string.match(f, '^(%d+):(.+)$')
      if at == version then
        read, fields = {}, text
        for name in string.gmatch(text, '[^,]+') do read[#read + 1] = name end
      end
    end
    s = {mirror = m, status = status or 'missing', steps = tonumber(steps) or 0, read = read,
         fields = fields}
    states[seq] = s
  end
  return s
end

-- An empty table is "[]" to some cjson builds and "{}" to others: objects are spelled here.
local function object(t)
  if next(t) == nil then return '{}' end
  return cjson.encode(t)
end

-- What the dispatcher reads of a claimed enrollment (engine/compose.py), spelled out as
-- JSON rather than built by cjson: this is the hot path. (Its sequence, `s`, is the
-- queue's.)
-- Then the kinds' sender pins (kinds.py `sender_field`), read by engine/budgets.py.
-- `o`: what became of earlier steps (step conditions), where any did; `sv`: the version
-- of its sequence's steps it runs on.
local READ = {'st', 'i', 'a', 't', 'c', 'n', 'md', 'o', 'sv'}
local PINS = #READ
for _, f in ipairs(KIND_SENDER_FIELDS) do READ[#READ + 1] = f end

local parts = {}
-- tenant -> its JSON text (a batch is mostly one tenant's)
local tenants = {}

-- Take a member for sending: its sequence's mirror goes in the reply; returns its contact's
-- values as JSON (an array: pairing them with their names is the dispatcher's work, which
-- costs less there than in this script).
local function take(seq, state, cid)
  mirrors[seq] = state.mirror
  if state.fields then fields_of[seq] = state.fields end
  return cjson.encode(rcall('HMGET', k_contact(tag, cid), unpack(state.read)))
end

-- The members of `seq`'s queue due now, at most `room` of them; returns how many.
local function claim_queue(seq, state, qkey, room)
  local members = rcall('ZRANGEBYSCORE', qkey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, room)
  -- What the hot path's items share: the sequence active with steps (checked once), its
  -- contact fields and the text before each item's tenant.
  local sendable, read, steps = state.status == 'active', state.read, state.steps
  local head = '",{"t":'
  local find, npins = string.find, #KIND_SENDER_FIELDS
  for j = 1, #members, 2 do
    local id, score = members[j], members[j + 1]
    local ekey = k_enrollment(tag, id)
    local h = rcall('HMGET', ekey, unpack(READ))
    local st, step = h[1], tonumber(h[2])
    -- (A lease score has a ".": due times are whole ms; is_leased.)
    if st == 'active' and sendable and step < steps and not find(score, '.', 1, true) then
      -- The hot path: an active step due, not a lease run out.
      if not mirrors[seq] then
        mirrors[seq] = state.mirror
        if state.fields then fields_of[seq] = state.fields end
      end
      local t = tenants[h[4]]
      if not t then
        t = cjson.encode(h[4])
        tenants[h[4]] = t
      end
      local pins = ''
      for i = 1, npins do
        local pin = h[PINS + i]
        if pin then pins = pins .. ',"' .. KIND_SENDER_FIELDS[i] .. '":"' .. pin .. '"' end
      end
      parts[#parts + 1] = '["' .. id .. head .. t .. ',"s":"' .. seq
        .. '","c":"' .. h[5] .. '","st":"active","i":"' .. h[2] .. '","n":"' .. h[6]
        .. '","k":"' .. score .. '"' .. (h[3] and (',"a":"' .. h[3] .. '"') or '')
        .. (h[7] and (',"md":' .. cjson.encode(h[7])) or '')
        .. (h[8] and (',"o":"' .. h[8] .. '"') or '')
        .. (h[9] and (',"sv":"' .. h[9] .. '"') or '') .. pins .. '},'
        .. cjson.encode(rcall('HMGET', k_contact(tag, h[5]), unpack(read))) .. ']'
    elseif st ~= 'active' and not (st == 'paused'
      and rcall('HGET', ekey, 'pr') == 'awaiting_task') then
      local e = st == 'paused' and to_table(rcall('HGETALL', ekey))
      if e and e['ra'] and state.status == 'active' then
        -- A pause that ends by itself (out_of_office) is over: due again from now.
        resume(id, e, now, {reason = e['pr'] .. '_ended'})
      else
        rcall('ZREM', qkey, id)
      end
    elseif st == 'paused' and state.status == 'active' and step < state.steps then
      -- A task step's hold came due (its task's due time): the step is claimed again and
      -- its task decides (includes/tasks.lua). A lease run out and still recorded is
      -- reclaimLeases' to settle.
      if not is_leased(score)
        or not rcall('ZSCORE', k_leases(tag), lease_token(tonumber(score) + 0.5)) then
        local e = to_table(rcall('HGETALL', ekey))
        local c = take(seq, state, e['c'])
        e['k'] = score
        parts[#parts + 1] = '[' .. cjson.encode(id) .. ',' .. object(e) .. ',' .. c .. ']'
      end
    else
      local e = to_table(rcall('HGETALL', ekey))
      if state.status == 'archived' then
        finish(id, e, 'cancelled', 'sequence_archived', now)
      elseif step >= state.steps then
        finish(id, e, 'completed', '', now)
      elseif not rcall('ZSCORE', k_leases(tag), lease_token(tonumber(score) + 0.5)) then
        -- A send that had started and was not settled: the provider may have the message.
        if hold then
          finish(id, e, 'paused', 'delivery_unknown', now, {step = step})
        else
          -- Its attempt is counted by the lease right before its send (leasePeeked), not
          -- here: a peek may come to nothing.
          local c = take(seq, state, e['c'])
          e['k'] = score
          parts[#parts + 1] = '[' .. cjson.encode(id) .. ',' .. object(e) .. ',' .. c .. ']'
        end
      end
    end
  end
  return #members / 2
end

local seen = 0
for _, seq in ipairs(rcall('ZRANGEBYSCORE', heads_key, '-inf', now, 'LIMIT', 0, limit)) do
  if seen >= limit then break end
  local state = sequence_state(seq)
  if state.status == 'active' or state.status == 'archived' then
    seen = seen + claim_queue(seq, state, k_queue(tag, seq), limit - seen)
  end
  -- (Paused, draft or gone: the queue waits untouched, out of the heads.)
  refresh_head(seq, state.status)
end

-- The reply's pieces, joined by the caller: a join here would copy and hash the whole
-- text twice more (every Lua string is hashed when made).
table.insert(parts, 1, '{"seen":' .. seen .. ',"m":' .. object(mirrors) .. ',"f":'
  .. object(fields_of) .. ',"items":[')
return parts
