--[[ A contact's automatic reply says they are away: pause the enrollments it is about, per
  each sequence's `on_out_of_office`.

  With an enrollment id (the auto-reply's In-Reply-To/References names the message seqd
  sent), only that enrollment; without one, every active enrollment of the contact whose
  sequence has already sent it a message on `channel` (as replyContact). `pause` pauses
  with paused_reason out_of_office; `pause_until_return` also sets `ra` (resume_at) and
  leaves the member in its queue at that time, where the claim that finds it due resumes
  it (claimDue, includes/enrollment.lua `finish`); `ignore` changes nothing.

  KEYS[1] heads      ZSET   the shard's sequence heads
  KEYS[2] outbox     STREAM the shard's events
  KEYS[3] mirrors    HASH   the shard's sequence mirror
  ARGV[1] tag
  ARGV[2] now            ms
  ARGV[3] tenant
  ARGV[4] contact_id     "" when enrollment_id is given
  ARGV[5] enrollment_id  "" for all of the contact's
  ARGV[6] channel        sms | email
  ARGV[7..] per sequence, 5 values: sequence_id, version, kinds (one letter per step),
            on_out_of_office (ignore | pause | pause_until_return), resume_at (ms; 0 but
            with pause_until_return)

  Returns a flat list: enrollment_id, outcome (paused | ignored | not_active | not_sent),
  for each enrollment considered.
  Errors: STALE:<sequence_id> (the mirror moved past the version given: re-read, retry)
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, tenant, cid, eid, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
-- @include enrollment
-- @include lifecycle

local seqs, stale = read_sequences(7, 5)
if stale then return redis.error_reply('STALE:' .. stale) end

return react(seqs, function(id, e, seq)
  local action = seq.extra[1]
  if action == 'pause' then
    finish(id, e, 'paused', 'out_of_office', now)
  elseif action == 'pause_until_return' then
    finish(id, e, 'paused', 'out_of_office', now, {resume_at = tonumber(seq.extra[2])})
  else
    return 'ignored'
  end
  return 'paused'
end)
