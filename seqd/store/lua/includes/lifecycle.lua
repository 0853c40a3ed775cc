-- Shared by the lifecycle scripts (replies, opt-outs, bounces): what a sequence's steps say
-- about one enrollment. A sequence's step kinds come in ARGV as one letter per step
-- (KIND_LETTER, from `kinds.py`) with the sequence version they were read at; the shard's
-- mirror (`sq`) must still hold that version, else the caller read a stale document and
-- retries.
-- Expects: rcall, the enrollment include, and `mirrors_key` (the shard's sequence mirror).

local function mirror_version(seq)
  return tonumber(string.match(rcall('HGET', mirrors_key, seq) or '', '^[^:]+:(%d+):'))
end

-- Per-sequence ARGV groups of `width` values starting at `from`, keyed by sequence id:
-- {version = n, kinds = '...', extra = {...}}. Errors STALE:<sequence> on a version change.
local function read_sequences(from, width)
  local seqs = {}
  for j = from, #ARGV, width do
    local sid, version = ARGV[j], tonumber(ARGV[j + 1])
    local current = mirror_version(sid)
    if current and current ~= version then return nil, sid end
    local extra = {}
    for k = 3, width - 1 do extra[#extra + 1] = ARGV[j + k] end
    seqs[sid] = {kinds = ARGV[j + 2], extra = extra}
  end
  return seqs, nil
end

-- Has the sequence sent the contact a message on this channel? A step counts once the
-- dispatcher recorded it sent (`advance` stores its provider id as `p<step>`, and sets the
-- kind's KIND_SENT_FIELD, `sm` for SMS, on the first), or while it is being sent
-- (`claimed`: its due member is leased, not yet advanced), since the message may already
-- be with the contact. Skipped steps (suppressed) have no provider id and do not count.
local function sent_on(e, kinds, channel, claimed)
  local letter, sent_field = KIND_LETTER[channel], KIND_SENT_FIELD[channel]
  local current = tonumber(e['i']) or 0
  if claimed and string.sub(kinds, current + 1, current + 1) == letter then return true end
  if sent_field and e[sent_field] then return true end
  for j = 1, math.min(current, #kinds) do
    if string.sub(kinds, j, j) == letter and e['p' .. (j - 1)] then return true end
  end
  return false
end

-- Are all the steps left (from the current one on) of this channel?
local function only_left(e, kinds, channel)
  local rest = string.sub(kinds, (tonumber(e['i']) or 0) + 1)
  if rest == '' then return false end
  return string.find(rest, '[^' .. KIND_LETTER[channel] .. ']') == nil
end

-- The contact's live enrollments: {enrollment id -> sequence id} from its `e:<seq>` fields.
local function live_enrollments(cid)
  local out = {}
  local flat = rcall('HGETALL', k_contact(tag, cid))
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'e:' then out[flat[i + 1]] = string.sub(flat[i], 3) end
  end
  return out
end

-- The enrollments a contact's message is about: the one named (`eid`), else every live
-- enrollment of contact `cid`, in id order.
local function targets(eid, cid)
  local found = {}
  if eid ~= '' then
    found[1] = eid
  else
    for id in pairs(live_enrollments(cid)) do found[#found + 1] = id end
    table.sort(found)
  end
  return found
end

-- What a contact's message (a reply, an auto-reply) did to each enrollment it is about, as
-- the flat list the scripts return: enrollment id, outcome. An enrollment of another
-- tenant or sequence is left out; one not active (unless `as_active(e)`) is not_active;
-- without an enrollment id, one whose sequence has not mailed the contact on `channel` is
-- not_sent; for the rest `act(id, e, seq)` acts and names the outcome.
-- Expects also: tenant, eid, cid, channel (the scripts' ARGV).
local function react(seqs, act, as_active)
  local out = {}
  for _, id in ipairs(targets(eid, cid)) do
    local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
    local seq = seqs[e['s']]
    if e['t'] == tenant and seq then
      local outcome
      if e['st'] ~= 'active' and not (as_active and as_active(e)) then
        outcome = 'not_active'
      elseif eid == '' and not sent_on(e, seq.kinds, channel,
          is_leased(rcall('ZSCORE', k_queue(tag, e['s']), id))) then
        outcome = 'not_sent'
      else
        outcome = act(id, e, seq)
      end
      out[#out + 1] = id
      out[#out + 1] = outcome
    end
  end
  return out
end

-- A pause that would end by itself (out_of_office, `ra`): an answer from the contact or
-- its account ends the absence, so such an enrollment counts as active for them.
local function absent(e) return e['st'] == 'paused' and e['ra'] ~= nil end

-- Pause an enrollment that answered (or whose account did) with `reason`; an absence's
-- pause is replaced. `more` adds fields to the event.
local function pause_for_reply(id, e, reason, now, more)
  if not absent(e) then return finish(id, e, 'paused', reason, now, more) end
  unschedule(id, e)
  clear_pause(k_enrollment(tag, id), e)
  rcall('HSET', k_enrollment(tag, id), 'pr', reason, 'ua', now)
  e['pr'] = reason; e['ua'] = now
  local extra = {paused_reason = reason}
  for k, v in pairs(more or {}) do extra[k] = v end
  enrollment_event('sequence.enrollment.paused', id, e, now, extra)
end
