-- Shared by claimDue, leasePeeked and advance (after the enrollment include; each defines
-- max_attempts): the end of a step that will not be sent, a lease run out counted as an
-- attempt, and their chunked queue writes.

-- ZADD the flat (score, member, ...) list `args` to `key`, one command per BULK members
-- (scripts.py: under Lua's limit on what unpack() spreads at once).
-- Whether the claim (or peek) that saw `token` still holds the member in queue `qkey`.
local function holds(id, token, qkey)
  local score = rcall('ZSCORE', qkey, id)
  -- The token is the score as Redis prints it; the numbers decide when the text differs.
  return score ~= false and (score == token or tonumber(score) == tonumber(token))
end

local function zadd_chunked(key, args)
  for i = 1, #args, 2 * BULK do
    rcall('ZADD', key, unpack(args, i, math.min(i + 2 * BULK - 1, #args)))
  end
end

-- A step that failed for good: `sequence.step.failed` (not retrying), then the enrollment
-- is cancelled with cancel_reason "failed" and the error in both events.
local function fail_step(id, e, step, kind, err, now)
  enrollment_event('sequence.step.failed', id, e, now,
    {step = step, kind = kind, error = err, retrying = false, attempts = tonumber(e['a']) or 0})
  finish(id, e, 'cancelled', 'failed', now, {step = step, error = err})
end

-- A lease that ran out unsettled (its worker died mid-send: the provider may have the
-- message) is sent again with an attempt counted, or cancelled (failed) when attempts are
-- used up. Whether to send it; `e` (the whole hash) has the new attempts.
local function count_unknown(id, e, ekey, step, now)
  e['a'] = tostring(rcall('HINCRBY', ekey, 'a', 1))
  if tonumber(e['a']) >= max_attempts then
    fail_step(id, e, step, '', 'worker lost during send; attempts exhausted', now)
    return false
  end
  return true
end
