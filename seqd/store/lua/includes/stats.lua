-- Per-step counters (store/stats.py): HINCRBY into the shard's hash of (sequence, UTC day)
-- the call's `now` falls on, field "<step>:<variant>:<code>", in the script that makes the
-- change counted, so the counts agree with the events. A hash gets its expiry (its day's
-- end plus the shard's retention) when a field of it is first written.
-- Expects: rcall, tag, and the k_* helpers.
-- @include stat_codes

-- Add `n` to `field` of the hash of `seq` on the day of `now` (ms).
local function stats_add(seq, field, now, n)
  local day = math.floor(tonumber(now) / STAT_DAY_MS)
  local key = k_stats(tag, seq, string.format('%d', day))
  if rcall('HINCRBY', key, field, n) == n then
    local days = tonumber(rcall('GET', k_stats_ttl(tag))) or STATS_RETENTION_DAYS
    rcall('EXPIREAT', key, string.format('%d', (day + 1 + days) * 86400))
  end
end

-- Add `n` (default 1) to `counter` of (seq, step, variant) on the day of `now` (ms).
local function stats_count(seq, step, variant, counter, now, n)
  stats_add(seq, step .. ':' .. (variant or NO_VARIANT) .. ':' .. STAT[counter], now, n or 1)
end

-- Add `n` (default 1) to `counter` of the sender a step was sent from (a sender id; nil:
-- the tenant's configured channel, not counted per sender), field "@<sender>:<code>": a
-- sequence-day holds at most (senders of its pools) x 15 such fields.
local function stats_count_sender(seq, sender, counter, now, n)
  if sender then stats_add(seq, SENDER_MARK .. sender .. ':' .. STAT[counter], now, n or 1) end
end

-- The A/B variant `step` of enrollment `e` (its hash, read) was sent as (`v<step>`, written
-- with the send), else NO_VARIANT: a step not sent yet (scheduled, deferred, skipped,
-- failed) has none, since the variant is picked when the message is composed.
local function stats_variant(e, step)
  return e['v' .. step] or NO_VARIANT
end

-- The sender (of a pool: senders/) `step` of `e` was sent from (`r<step>`, written with the
-- send), else nil.
local function stats_sender(e, step)
  return e['r' .. step]
end

-- Count `counter` of `e`'s (a hash read whole) step `step`: under its variant and sender.
local function stats_step(e, step, counter, now)
  stats_count(e['s'], step, stats_variant(e, step), counter, now)
  stats_count_sender(e['s'], stats_sender(e, step), counter, now)
end

-- The step an outcome of the whole enrollment (a reply, an opt-out, a bounce, its end) is
-- credited to: the last step sent to the contact, i.e. the highest step before the current
-- one with a provider id (`p<step>`), else the one before the current, else NO_STEP.
local function credit_step(e)
  local current = tonumber(e['i']) or 0
  for j = current - 1, 0, -1 do
    if e['p' .. j] then return tostring(j) end
  end
  if current > 0 then return tostring(current - 1) end
  return NO_STEP
end

-- Count an outcome of the whole enrollment `e` (a hash read whole) on its credited step.
local function stats_credit(e, counter, now)
  stats_step(e, credit_step(e), counter, now)
end
