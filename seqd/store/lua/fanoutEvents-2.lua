--[[ Acknowledge outbox entries and schedule their webhook deliveries in one step.

  Acknowledging and scheduling in one script means a crash can neither lose the
  deliveries of an acknowledged entry nor write them twice: an entry whose XACK finds
  nothing pending (another reader got there first) schedules nothing, and a delivery
  whose id (derived from event and endpoint) exists already is left alone. An
  acknowledged entry is deleted: the outbox holds only what is still to be handled.

  KEYS[1] outbox  STREAM the shard's outbox
  KEYS[2] due     ZSET   endpoint id -> earliest due delivery of the shard
  ARGV[1] tag
  ARGV[2] group   the readers' consumer group
  ARGV[3] now     ms
  ARGV[4..] per entry: entry_id, tenant, due (ms), count, then count deliveries of 5
            values: delivery_id, endpoint_id, event_id, type, body (an entry of several
            events, `store/outbox.py`, has the deliveries of all of them); an entry with
            count 0 (no endpoint wants any of its events) is only acknowledged, together
            with the others like it

  Returns the number of deliveries written.
]]
local rcall = redis.call
local outbox_key, due_key = KEYS[1], KEYS[2]
local tag, group, now = ARGV[1], ARGV[2], ARGV[3]
-- @include webhooks

local written = 0
-- Entries that schedule nothing: acknowledged and deleted in one XACK and one XDEL.
local plain = {}
local i = 4
while i <= #ARGV do
  local entry, tenant, due, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]),
    tonumber(ARGV[i + 3])
  local pending = 0
  if count == 0 then
    plain[#plain + 1] = entry
  else
    pending = rcall('XACK', outbox_key, group, entry)
    rcall('XDEL', outbox_key, entry)
  end
  for j = i + 4, i + 3 + 5 * count, 5 do
    local id, endpoint = ARGV[j], ARGV[j + 1]
    local dkey = k_delivery(tag, id)
    if pending == 1 and rcall('EXISTS', dkey) == 0 then
      rcall('HSET', dkey, 't', tenant, 'w', endpoint, 'v', ARGV[j + 2], 'y', ARGV[j + 3],
        'b', ARGV[j + 4], 'a', 0, 'st', 'pending', 'n', due, 'ca', now, 'k', 0)
      rcall('ZADD', k_delivery_queue(tag, endpoint), due, id)
      local score = rcall('ZSCORE', due_key, endpoint)
      if not score or tonumber(score) > due then rcall('ZADD', due_key, due, endpoint) end
      written = written + 1
    end
  end
  i = i + 4 + 5 * count
end
for j = 1, #plain, 1000 do
  local ids = {unpack(plain, j, math.min(j + 999, #plain))}
  rcall('XACK', outbox_key, group, unpack(ids))
  rcall('XDEL', outbox_key, unpack(ids))
end
return written
