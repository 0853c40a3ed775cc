--[[ A contact answered: pause (or complete) the enrollments the answer is about.

  With an enrollment id (an email reply whose In-Reply-To/References names the message
  seqd sent), only that enrollment. Without one, every active enrollment of the contact
  whose sequence has already sent it a message on `channel` (an SMS reply names no
  message, so it is about every conversation held on that channel). A pause that would end
  by itself (out_of_office, `ra`) counts as active: the reply's pause replaces it. A step being sent
  right now counts as sent (lifecycle.lua `sent_on`). Pause and complete take the member
  out of its queue: an advance from the worker sending meanwhile is stale (a send that
  did happen is still recorded; the pause stands).

  KEYS[1] heads      ZSET   the shard's sequence heads
  KEYS[2] outbox     STREAM the shard's events
  KEYS[3] mirrors HASH   the shard's sequence mirror
  ARGV[1] tag
  ARGV[2] now            ms
  ARGV[3] tenant
  ARGV[4] contact_id     "" when enrollment_id is given
  ARGV[5] enrollment_id  "" for all of the contact's
  ARGV[6] channel        sms | email
  ARGV[7..] per sequence, 4 values: sequence_id, version, kinds (one letter per step,
            s|e), on_reply (pause | complete)

  Returns a flat list: enrollment_id, outcome (paused | completed | not_active |
  not_sent), for each enrollment considered.
  Errors: STALE:<sequence_id> (the mirror moved past the version given: re-read, retry)
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, tenant, cid, eid, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
-- @include enrollment
-- @include lifecycle

local seqs, stale = read_sequences(7, 4)
if stale then return redis.error_reply('STALE:' .. stale) end

-- Step conditions read a reply on the last step sent before it (seqd/conditions.py).
local function mark_reply(id, e)
  local last = (tonumber(e['i']) or 0) - 1
  if last >= 0 then set_outcome(k_enrollment(tag, id), last, 'r') end
end

return react(seqs, function(id, e, seq)
  mark_reply(id, e)
  if seq.extra[1] == 'complete' then
    finish(id, e, 'completed', '', now)
    return 'completed'
  end
  pause_for_reply(id, e, 'reply_received', now)
  return 'paused'
end, absent)
