--[[ Enroll contacts in sequences, idempotently, in one shard.

  KEYS[1] due       ZSET  the shard's time index
  KEYS[2] outbox    STREAM the shard's events
  KEYS[3] sequences HASH  the shard's mirror of sequence states ("<status>:<version>:<steps>")
  ARGV[1] tag       the shard's hash tag
  ARGV[2] now       ms
  ARGV[3] tenant
  ARGV[4..] items, 5 values each:
            enrollment_id (new, used only if none is active), sequence_id, contact_id,
            first_wait_ms, metadata (JSON object text, "" for none)

  Returns one reply per item:
    {1, enrollment_id, idempotent (0|1), <enrollment hash, flat>}
    {0, code, detail}   code: CONTACT_NOT_FOUND | SEQUENCE_NOT_ACTIVE (detail: status)
]]
local rcall = redis.call
local due_key, outbox_key, seqs_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, tenant = ARGV[1], ARGV[2], ARGV[3]
-- @include enrollment

local out = {}
for i = 4, #ARGV, 5 do
  local id, seq, cid, wait, md = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local ckey = k_contact(tag, cid)
  local mirror = rcall('HGET', seqs_key, seq)
  local seq_status = mirror and string.match(mirror, '^([^:]+)') or 'missing'
  if rcall('HGET', ckey, 'tenant') ~= tenant then
    out[#out + 1] = {0, 'CONTACT_NOT_FOUND', cid}
  else
    local existing = rcall('HGET', ckey, 'e:' .. seq)
    if existing then
      out[#out + 1] = {1, existing, 1, rcall('HGETALL', k_enrollment(tag, existing))}
    elseif seq_status ~= 'active' then
      out[#out + 1] = {0, 'SEQUENCE_NOT_ACTIVE', seq_status}
    else
      local due_at = tonumber(now) + tonumber(wait)
      local e = {t = tenant, s = seq, c = cid, st = 'active', i = '0', n = tostring(due_at),
                 ea = now, ua = now, k = '0', a = '0'}
      local ekey = k_enrollment(tag, id)
      rcall('HSET', ekey, 't', tenant, 's', seq, 'c', cid, 'i', 0, 'n', due_at, 'ea', now,
        'k', 0, 'a', 0)
      if md ~= '' then rcall('HSET', ekey, 'md', md); e['md'] = md end
      e['st'] = nil
      move_status(id, e, 'active', now)
      rcall('HSET', ckey, 'e:' .. seq, id)
      rcall('ZADD', due_key, due_at, id)
      enrollment_event('sequence.enrollment.created', id, e, now, nil)
      out[#out + 1] = {1, id, 0, rcall('HGETALL', ekey)}
    end
  end
end
return out
