--[[ Append an event that changes no state (opt-in, auto-reply, transient bounce) to a
  shard's outbox, so webhooks deliver it like every other event.

  KEYS[1] outbox  STREAM
  ARGV[1] now     ms
  ARGV[2] tenant
  ARGV[3] type
  ARGV[4] data    JSON object

  Returns the stream entry id.
]]
local rcall = redis.call
local outbox_key = KEYS[1]
local now, tenant, etype, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
return rcall('XADD', outbox_key, '*', 'type', etype, 'tenant', tenant, 'at', now, 'data', data)
