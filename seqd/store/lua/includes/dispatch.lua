-- Shared by claimDue and advance (after the enrollment include): the end of a step that
-- will not be sent, and their chunked queue writes.

-- ZADD the flat (score, member, ...) list `args` to `key`, one command per BULK members
-- (scripts.py: under Lua's limit on what unpack() spreads at once).
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
