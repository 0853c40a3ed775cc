--[[ Count one message against its contact's frequency cap for each step of a batch
  (seqd/engine/budgets.py): at most `limit` messages of a kind to a contact in any window.

  Each contact's messages of a kind are a ZSET (k_frequency) of "<enrollment id>:<step>"
  -> the ms it was counted, expiring a window after the last one counted. Under the limit
  (what has left the window included) a step is counted at once: 3 commands; a full set
  first drops what has left the window. A step already counted (a retry, a deferral by
  its sender) passes again without counting twice.

  KEYS[1] heads     the shard's heads: names the shard's slot, not read or written
  ARGV[1] tag       the shard's hash tag
  ARGV[2] now       ms
  ARGV[3..]         groups of 5: contact id, kind, member ("<enrollment id>:<step>"),
                    limit, window (ms)

  Returns per group: 0 when counted (it may be sent), else the ms the window lets it go.
]]
local rcall = redis.call
local tag, now = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 5 do
  local key = k_frequency(tag, ARGV[i], ARGV[i + 1])
  local member, limit, window = ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local wait = 0
  -- Under the limit even counting what has left the window: counted at once (NX: a step
  -- counted before keeps its time). Only a full set is trimmed and looked at closely.
  local n = rcall('ZCARD', key)
  if n >= limit then
    rcall('ZREMRANGEBYSCORE', key, '-inf', now - window)
    n = rcall('ZCARD', key)
  end
  if n < limit then
    if rcall('ZADD', key, 'NX', now, member) == 1 then rcall('PEXPIRE', key, window) end
  elseif not rcall('ZSCORE', key, member) then
    -- The window lets one more in when the (n - limit + 1)th oldest leaves it.
    local oldest = rcall('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    wait = tonumber(oldest[2]) + window
  end
  out[#out + 1] = wait
end
return out
