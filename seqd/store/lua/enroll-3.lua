--[[ Enroll contacts in a sequence, idempotently, in one shard.

  This is the hot path of every way in (3 commands per item), so it writes only what a
  new enrollment has: no `a` or `ua` (absent means 0 and enrolled_at, and every reader
  knows it), no enrolled_at (the time in the id, which the caller makes at `now`), one
  HSET of the hash; the counter and the sequence's queue (its time index and its listing
  of active enrollments) written once per call, and the `created` events batched into
  outbox entries of up to 200 (`emit_batched`), each event's JSON spelled out rather than
  built by cjson. A created item's reply is lean: the caller knows its fields (it passed
  them).

  KEYS[1] heads     ZSET  the shard's sequence heads
  KEYS[2] outbox    STREAM the shard's events
  KEYS[3] mirrors HASH  the shard's mirror of sequence states ("<status>:<version>:<steps>")
  ARGV[1] tag       the shard's hash tag
  ARGV[2] now       ms
  ARGV[3] tenant
  ARGV[4] sequence_id
  ARGV[5] first_wait_ms
  ARGV[6..] items, 5 values each:
            enrollment_id (new, from ids.new; used only if none is active), contact_id,
            metadata (JSON object text, "" for none), due (ms the first step goes, as the
            process computed it in the contact's zone; "" for now + first_wait_ms), zone
            ("<timezone_source>:<timezone_used>" for field `z`; "" for none)

  Returns one reply per item:
    {1, enrollment_id, 0}                              created: t, s, c, st active, i 0,
                                                       n due, md, z
    {1, enrollment_id, 1, <enrollment hash, flat>}     already enrolled
    {0, code, detail}   code: CONTACT_NOT_FOUND | SEQUENCE_NOT_ACTIVE (detail: status)
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, tenant, seq, wait = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- @include enrollment

local mirror = rcall('HGET', mirrors_key, seq)
local seq_status = mirror and string.match(mirror, '^([^:]+)') or 'missing'
local default_due = string.format('%d', tonumber(now) + tonumber(wait))
local active = seq_status == 'active'
local field = 'e:' .. seq
-- The `created` event's data, {"id": id, "fields": {the event fields}} like every
-- enrollment event's. Ids need no JSON escaping: the sequence and the contact are seqd's
-- own (the mirror and the contact exist), and so is the new id (ids.new: [0-9A-Za-z_]).
local head = '","fields":{"s":"' .. seq .. '","c":"'
local tail = '","st":"active","i":"0","n":"'

local out, due, earliest = {}, {}, nil
for i = 6, #ARGV, 5 do
  local id, cid, md, due_text, zone = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if due_text == '' then due_text = default_due end
  local ckey = k_contact(tag, cid)
  local owner, existing = unpack(rcall('HMGET', ckey, 'tenant', field))
  if owner ~= tenant then
    out[#out + 1] = {0, 'CONTACT_NOT_FOUND', cid}
  elseif existing then
    out[#out + 1] = {1, existing, 1, rcall('HGETALL', k_enrollment(tag, existing))}
  elseif not active then
    out[#out + 1] = {0, 'SEQUENCE_NOT_ACTIVE', seq_status}
  else
    local ekey = k_enrollment(tag, id)
    local data = '{"id":"' .. id .. head .. cid .. tail .. due_text .. '"'
    local fields = {'t', tenant, 's', seq, 'c', cid, 'st', 'active', 'i', 0, 'n', due_text}
    if md ~= '' then
      fields[#fields + 1] = 'md'; fields[#fields + 1] = md
      data = data .. ',"md":' .. cjson.encode(md)
    end
    if zone ~= '' then
      -- "<source>:<IANA name>": letters, digits, "/_-+:" only, no JSON escaping.
      fields[#fields + 1] = 'z'; fields[#fields + 1] = zone
      data = data .. ',"z":"' .. zone .. '"'
    end
    rcall('HSET', ekey, unpack(fields))
    rcall('HSET', ckey, field, id)
    emit_batched('sequence.enrollment.created', tenant, now, data .. '}}')
    due[#due + 1] = due_text
    due[#due + 1] = id
    local at = tonumber(due_text)
    if not earliest or at < earliest then earliest = at end
    out[#out + 1] = {1, id, 0}
  end
end

-- What move_status and schedule do per item, once per call: the counter, the queue and
-- the sequence's head. (At most ENROLL_BATCH items a call: store/enrollments.py.)
if #due > 0 then
  rcall('HINCRBY', k_counts(tag, seq), 'active', #due / 2)
  rcall('ZADD', k_queue(tag, seq), unpack(due))
  rcall('ZADD', heads_key, 'LT', string.format('%d', earliest), seq)
  stats_count(seq, 0, NO_VARIANT, 'scheduled', now, #due / 2)
  flush_batched(now)
end
return out
