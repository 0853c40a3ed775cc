--[[ Append a batch of one tenant's events to its log, each payload once (seqd/events/reader.py).

  A payload holds one event, or every event of a batched outbox entry (store/outbox.py);
  its key, named by its first event's id, doubles as the "already recorded" mark: an
  outbox entry handled twice (its reader died before acknowledging it), or a payload twice
  in one batch, appends nothing the second time. Payload keys are built here from the
  tenant tag (`k_event`), in the log's slot. The caller bounds a batch
  (`events.RECORD_BATCH`) so one call holds the server for a few ms at most.

  KEYS[1] events  STREAM the tenant's log: per event v (event id), y (type), at (ms),
                         e (enrollment id) and c (contact id) when the event has them
  ARGV[1] tag            the tenant's hash tag; per payload k_event(tag, first event id) is
                         a STRING, expiring with the log's retention
  ARGV[2] retention_ms
  ARGV[3] min_id         log entries before this stream id are past retention
  ARGV[4..] per payload, in log order: type, created_at (ms), payload (JSON), count, then
            count events of 3 values: event_id, enrollment_id ("" for none), contact_id
            ("" for none)

  Returns the number of events appended (those not in the log already). An ARGV tail
  that is not whole payloads: BAD_ITEMS, nothing written.
]]
local rcall = redis.call
local log_key = KEYS[1]
local tag, retention, min_id = ARGV[1], ARGV[2], ARGV[3]
-- Entries one call trims at most (approximate trimming frees whole stream nodes).
local TRIM_LIMIT = 1000

-- Checked whole before anything is written: a script error does not roll back.
local i = 4
while i <= #ARGV do
  local count = tonumber(ARGV[i + 3])
  if not count or count < 1 then return redis.error_reply('BAD_ITEMS:not whole payloads') end
  i = i + 4 + 3 * count
end
if i ~= #ARGV + 1 then return redis.error_reply('BAD_ITEMS:not whole payloads') end

local appended = 0
i = 4
while i <= #ARGV do
  local etype, at, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 3])
  -- NX: the payload key is also the "recorded already" mark.
  if rcall('SET', k_event(tag, ARGV[i + 4]), ARGV[i + 2], 'PX', retention, 'NX') then
    for j = i + 4, i + 1 + 3 * count, 3 do
      local eid, cid = ARGV[j + 1], ARGV[j + 2]
      if eid ~= '' and cid ~= '' then
        rcall('XADD', log_key, '*', 'v', ARGV[j], 'y', etype, 'at', at, 'e', eid, 'c', cid)
      else
        local fields = {'v', ARGV[j], 'y', etype, 'at', at}
        if eid ~= '' then fields[#fields + 1] = 'e'; fields[#fields + 1] = eid end
        if cid ~= '' then fields[#fields + 1] = 'c'; fields[#fields + 1] = cid end
        rcall('XADD', log_key, '*', unpack(fields))
      end
    end
    appended = appended + count
  end
  i = i + 4 + 3 * count
end
if appended > 0 then
  rcall('XTRIM', log_key, 'MINID', '~', min_id, 'LIMIT', TRIM_LIMIT)
end
return appended
