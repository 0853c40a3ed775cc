-- Shared by claimDue and advance (after the enrollment include): the end of a step that
-- will not be sent.

-- A step that failed for good: `sequence.step.failed` (not retrying), then the enrollment
-- is cancelled with cancel_reason "failed" and the error in both events.
local function fail_step(id, e, step, kind, err, now, due_key)
  enrollment_event('sequence.step.failed', id, e, now,
    {step = step, kind = kind, error = err, retrying = false, attempts = tonumber(e['a']) or 0})
  finish(id, e, 'cancelled', 'failed', now, due_key, {step = step, error = err})
end
