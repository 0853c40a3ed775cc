--[[ Append a batch of one tenant's events to its log, each once (seqd/events/reader.py).

  The payload key doubles as the "already recorded" mark: an outbox entry handled twice
  (its reader died before acknowledging it), or an event twice in one batch, appends
  nothing the second time. Payload keys are built here from the tenant tag (`k_event`),
  in the log's slot. The caller bounds a batch (`events.RECORD_BATCH`) so one call holds
  the server for a few ms at most.

  KEYS[1] events  STREAM the tenant's log: per entry v (event id), y (type), at (ms),
                         e (enrollment id) and c (contact id) when the event has them
  ARGV[1] tag            the tenant's hash tag; per event k_event(tag, id) is a STRING
                         with its payload, expiring with the log's retention
  ARGV[2] retention_ms
  ARGV[3] min_id         log entries before this stream id are past retention
  ARGV[4..] per event, in log order: event_id, type, created_at (ms),
            enrollment_id ("" for none), contact_id ("" for none), payload (JSON)

  Returns the number of events appended (those not in the log already). An ARGV tail
  that is not whole events: BAD_ITEMS, nothing written.
]]
local rcall = redis.call
local log_key = KEYS[1]
local tag, retention, min_id = ARGV[1], ARGV[2], ARGV[3]
-- Entries one call trims at most (approximate trimming frees whole stream nodes).
local TRIM_LIMIT = 1000
if (#ARGV - 3) % 6 ~= 0 then return redis.error_reply('BAD_ITEMS:not whole events') end

local appended = 0
for i = 4, #ARGV, 6 do
  local id, etype, at, eid, cid = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  -- NX: the payload key is also the "recorded already" mark.
  if rcall('SET', k_event(tag, id), ARGV[i + 5], 'PX', retention, 'NX') then
    local fields = {'v', id, 'y', etype, 'at', at}
    if eid ~= '' then fields[#fields + 1] = 'e'; fields[#fields + 1] = eid end
    if cid ~= '' then fields[#fields + 1] = 'c'; fields[#fields + 1] = cid end
    rcall('XADD', log_key, '*', unpack(fields))
    appended = appended + 1
  end
end
if appended > 0 then
  rcall('XTRIM', log_key, 'MINID', '~', min_id, 'LIMIT', TRIM_LIMIT)
end
return appended
