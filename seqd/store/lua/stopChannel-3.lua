--[[ A contact's phone or address may no longer be used (opt-out, unsubscribe, bounce):
  cancel its live enrollments that have only steps of that channel left, and record the
  event. Mixed enrollments stay: the dispatcher skips their suppressed steps at send time.

  KEYS[1] heads      ZSET
  KEYS[2] outbox     STREAM
  KEYS[3] mirrors HASH   the shard's sequence mirror
  ARGV[1] tag
  ARGV[2] now            ms
  ARGV[3] tenant
  ARGV[4] contact_id     "" when no contact holds the value (only the event is written)
  ARGV[5] channel        sms | email
  ARGV[6] cancel_reason  opted_out | bounced
  ARGV[7] event_type     contact.opted_out | contact.bounced
  ARGV[8] event_data     JSON object; `cancelled` (the ids, if any) is added to it
  ARGV[9] quiet          1: write the event only if an enrollment was cancelled (the value
                         was suppressed already, and its event written then)
  ARGV[10..] per sequence, 3 values: sequence_id, version, kinds

  Returns the ids of the enrollments cancelled.
  Errors: STALE:<sequence_id>
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, tenant, cid, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local reason, etype, edata, quiet = ARGV[6], ARGV[7], cjson.decode(ARGV[8]), ARGV[9] == '1'
-- @include enrollment
-- @include lifecycle

-- The counter a stop adds to: an email opt-out is an unsubscribe (the link, the mailto).
local counter = reason == 'bounced' and 'bounced'
  or (channel == 'email' and 'unsubscribed' or 'opted_out')

local seqs, stale = read_sequences(10, 3)
if stale then return redis.error_reply('STALE:' .. stale) end

local cancelled = {}
if cid ~= '' then
  local ids = {}
  for id in pairs(live_enrollments(cid)) do ids[#ids + 1] = id end
  table.sort(ids)
  for _, id in ipairs(ids) do
    local e = to_table(rcall('HGETALL', k_enrollment(tag, id)))
    local seq = seqs[e['s']]
    -- Counted once, when the value is first stopped, on each enrollment that had sent to it.
    if e['t'] == tenant and seq and not quiet and sent_on(e, seq.kinds, channel, false) then
      stats_credit(e, counter, now)
    end
    if e['t'] == tenant and seq and only_left(e, seq.kinds, channel)
        and finish(id, e, 'cancelled', reason, now) == nil then
      cancelled[#cancelled + 1] = id
    end
  end
end
-- An empty Lua table would encode as {}: the field is left out when nothing was cancelled.
if #cancelled > 0 then edata['cancelled'] = cancelled end
if #cancelled > 0 or not quiet then emit(etype, tenant, now, edata) end
return cancelled
