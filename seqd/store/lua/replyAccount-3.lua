--[[ Someone on an account answered: pause (or complete) every live enrollment of the
  account's contacts in this shard whose sequence stops the whole account
  (`on_reply_scope = "account"`), in one step per shard.

  The account's contacts in the shard are its set (k_account_contacts, kept by putContact,
  createContacts and deleteContact). An enrollment paused until a return (out_of_office,
  `ra`) counts as active. The others are paused with paused_reason `account_replied`
  (event `sequence.enrollment.paused` with `replied_by`), or completed per `on_reply`, and
  each counts `replied` on its credited step (includes/stats.lua `stats_credit`).

  KEYS[1] heads      ZSET   the shard's sequence heads
  KEYS[2] outbox     STREAM the shard's events
  KEYS[3] mirrors    HASH   the shard's sequence mirror
  ARGV[1] tag
  ARGV[2] now          ms
  ARGV[3] tenant
  ARGV[4] account      the account's digest (seqd/accounts.py)
  ARGV[5] replied_by   the contact that answered
  ARGV[6..] per sequence, 5 values: sequence_id, version, kinds, on_reply (pause |
            complete), on_reply_scope (contact | account)

  Returns a flat list: enrollment_id, outcome (paused | completed), for each enrollment
  changed.
  Errors: STALE:<sequence_id> (the mirror moved past the version given: re-read, retry)
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, tenant, account, replied_by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- @include enrollment
-- @include lifecycle

local seqs, stale = read_sequences(6, 5)
if stale then return redis.error_reply('STALE:' .. stale) end

local out = {}
local members = rcall('SMEMBERS', k_account_contacts(tag, tenant, account))
table.sort(members)
for _, cid in ipairs(members) do
  local live = live_enrollments(cid)
  local ids = {}
  for id in pairs(live) do ids[#ids + 1] = id end
  table.sort(ids)
  for _, id in ipairs(ids) do
    local seq = seqs[live[id]]
    if seq and seq.extra[2] == 'account' then
      local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
      if e['t'] == tenant and (e['st'] == 'active' or absent(e)) then
        -- The account's answer is this enrollment's reply: counted on the step it credits.
        stats_credit(e, 'replied', now)
        if seq.extra[1] == 'complete' then
          finish(id, e, 'completed', '', now, {replied_by = replied_by})
          out[#out + 1] = id
          out[#out + 1] = 'completed'
        else
          pause_for_reply(id, e, 'account_replied', now, {replied_by = replied_by})
          out[#out + 1] = id
          out[#out + 1] = 'paused'
        end
      end
    end
  end
end
return out
