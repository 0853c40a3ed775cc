--[[ Append one event to its tenant's log, once (seqd/events/reader.py).

  The payload key doubles as the "already recorded" mark: an outbox entry handled twice
  (its reader died before acknowledging it) appends nothing the second time.

  KEYS[1] events  STREAM the tenant's log: per entry v (event id), y (type), at (ms),
                         e (enrollment id) and c (contact id) when the event has them
  KEYS[2] event   STRING the event's payload, expiring with the log's retention
  ARGV[1] event_id
  ARGV[2] type
  ARGV[3] created_at     ms
  ARGV[4] enrollment_id  "" for none
  ARGV[5] contact_id     "" for none
  ARGV[6] payload        JSON
  ARGV[7] retention_ms
  ARGV[8] min_id         log entries before this stream id are past retention

  Returns 1 when appended, 0 when the event was in the log already.
]]
local rcall = redis.call
local log_key, event_key = KEYS[1], KEYS[2]
local id, etype, at, eid, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local payload, retention, min_id = ARGV[6], ARGV[7], ARGV[8]
-- Entries one call trims at most (approximate trimming frees whole stream nodes).
local TRIM_LIMIT = 1000

if rcall('EXISTS', event_key) == 1 then return 0 end
rcall('SET', event_key, payload, 'PX', retention)
local fields = {'v', id, 'y', etype, 'at', at}
if eid ~= '' then fields[#fields + 1] = 'e'; fields[#fields + 1] = eid end
if cid ~= '' then fields[#fields + 1] = 'c'; fields[#fields + 1] = cid end
rcall('XADD', log_key, '*', unpack(fields))
rcall('XTRIM', log_key, 'MINID', '~', min_id, 'LIMIT', TRIM_LIMIT)
return 1
