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
  ARGV[6] steps_version  the sequence's version of its steps (field `sv`; "" for 1)
  ARGV[7] reenroll       "" (again once the last one ended) | "never" | ms that must pass
                         since the last one ended (the contact's `x:<seq>`; its end is its
                         `ca`, else `ua`)
  ARGV[8] exclusive      "1": the contact may have one live exclusive enrollment (its `ex`;
                         `w:<seq>` marks one waiting in its exclusive_waiting list)
  ARGV[9..] items, 6 values each:
            enrollment_id (new, from ids.new; used only if none is active), contact_id,
            metadata (JSON object text, "" for none), due (ms the first step goes, as the
            process computed it in the contact's zone; "" for now + first_wait_ms), zone
            (field `z`, codec.zone_field: "<source letter>:<zone>"; "" for none), if_busy
            ("queue": wait for the contact's live exclusive enrollment to end; "": refuse)

  Returns one reply per item:
    {1, enrollment_id, 0}                              created: t, s, c, st active, i 0,
                                                       n due, md, z, sv
    {1, enrollment_id, 1, <enrollment hash, flat>}     already enrolled
    {2, enrollment_id, behind}                         queued behind enrollment `behind`
                                                       (or already queued: its id)
    {0, code, detail}   code: CONTACT_NOT_FOUND | SEQUENCE_NOT_ACTIVE (detail: status) |
                        REENROLL_NEVER (detail: the last enrollment) |
                        REENROLL_TOO_SOON ("<last enrollment>:<ms when allowed>") |
                        BUSY (detail: the contact's live exclusive enrollment)
]]
local rcall = redis.call
local heads_key, outbox_key, mirrors_key = KEYS[1], KEYS[2], KEYS[3]
local tag, now, tenant, seq, wait = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local steps_version, reenroll, exclusive = ARGV[6], ARGV[7], ARGV[8] == '1'
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
-- Why the rules refuse contact `ckey` a new enrollment now ({code, detail}), or nil. The
-- rules' reads happen only for a sequence that has them: the default costs nothing.
local ruled = reenroll ~= '' or exclusive
local function refused(ckey, cid, id, md, if_busy)
  if reenroll ~= '' then
    local last_id = rcall('HGET', ckey, 'x:' .. seq)
    if last_id then
      if reenroll == 'never' then return {0, 'REENROLL_NEVER', last_id} end
      local ca, ua = unpack(rcall('HMGET', k_enrollment(tag, last_id), 'ca', 'ua'))
      local allowed = tonumber(ca or ua or 0) + tonumber(reenroll)
      if tonumber(now) < allowed then
        return {0, 'REENROLL_TOO_SOON', last_id .. ':' .. string.format('%d', allowed)}
      end
    end
  end
  if exclusive then
    local busy, queued = unpack(rcall('HMGET', ckey, 'ex', 'w:' .. seq))
    local st = busy and rcall('HGET', k_enrollment(tag, busy), 'st')
    if busy and st ~= 'active' and st ~= 'paused' then
      -- Ended without move_status (its hash deleted by hand): the contact is free.
      rcall('HDEL', ckey, 'ex')
      busy = nil
    end
    if busy then
      if if_busy ~= 'queue' then return {0, 'BUSY', busy} end
      if queued then return {2, queued, busy} end
      rcall('RPUSH', k_exclusive_waiting(tag, cid), cjson.encode(
        {id = id, s = seq, t = tenant, md = md, w = tonumber(wait), v = steps_version}))
      rcall('HSET', ckey, 'w:' .. seq, id)
      return {2, id, busy}
    end
  end
  return nil
end

for i = 9, #ARGV, 6 do
  local id, cid, md, due_text, zone = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if due_text == '' then due_text = default_due end
  local ckey = k_contact(tag, cid)
  local owner, existing = unpack(rcall('HMGET', ckey, 'tenant', field))
  local no = nil
  if owner ~= tenant then
    out[#out + 1] = {0, 'CONTACT_NOT_FOUND', cid}
  elseif existing then
    out[#out + 1] = {1, existing, 1, rcall('HGETALL', k_enrollment(tag, existing))}
  elseif not active then
    out[#out + 1] = {0, 'SEQUENCE_NOT_ACTIVE', seq_status}
  elseif ruled then
    no = refused(ckey, cid, id, md, ARGV[i + 5])
    if no then out[#out + 1] = no end
  end
  if owner == tenant and not existing and active and not no then
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
    if steps_version ~= '' then
      fields[#fields + 1] = 'sv'; fields[#fields + 1] = steps_version
      data = data .. ',"sv":"' .. steps_version .. '"'
    end
    rcall('HSET', ekey, unpack(fields))
    if exclusive then
      rcall('HSET', ckey, field, id, 'ex', id)
    else
      rcall('HSET', ckey, field, id)
    end
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
