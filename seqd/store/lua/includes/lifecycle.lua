-- Shared by the lifecycle scripts (replies, opt-outs, bounces): what a sequence's steps say
-- about one enrollment. A sequence's step kinds come in ARGV as one letter per step
-- ('s' sms, 'e' email) with the sequence version they were read at; the shard's mirror
-- (`sq`) must still hold that version, else the caller read a stale document and retries.
-- Expects: rcall, the enrollment include, and `seqs_key` (the shard's sequence mirror).

local LETTER = {sms = 's', email = 'e'}

local function mirror_version(seq)
  return tonumber(string.match(rcall('HGET', seqs_key, seq) or '', '^[^:]+:(%d+):'))
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

-- Has a step of this channel gone out before the enrollment's current step?
-- `sm` is set by the dispatcher once an SMS step was sent to the contact.
local function sent_on(e, kinds, channel)
  if channel == 'sms' and e['sm'] then return true end
  local done = string.sub(kinds, 1, tonumber(e['i']) or 0)
  return string.find(done, LETTER[channel], 1, true) ~= nil
end

-- Are all the steps left (from the current one on) of this channel?
local function only_left(e, kinds, channel)
  local rest = string.sub(kinds, (tonumber(e['i']) or 0) + 1)
  if rest == '' then return false end
  local other = channel == 'sms' and 'e' or 's'
  return string.find(rest, other, 1, true) == nil
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
