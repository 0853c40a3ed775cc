--[[ One request against an API key's rate limit: GCRA (generic cell rate algorithm).

  A limit of L requests per period P is an emission interval T = P / L and a burst
  tolerance of P: the key stores only its theoretical arrival time (TAT), so the state is
  one number whatever L is, and a full period of idleness restores the whole quota.

  KEYS[1] tat       STRING  ms, decimal (absent = a full quota)
  ARGV[1] now       ms
  ARGV[2] limit     L, requests per period
  ARGV[3] period    P, ms
  ARGV[4] cost      requests taken at once (optional, 1): a process takes a few ahead of
                    use (seqd/api/ratelimit.py), all or none

  Returns {allowed 1|0, remaining, retry_after_ms, reset_ms}: remaining requests now,
  the wait before the next allowed one (0 when allowed), and the time until the quota is
  whole again.
]]
local rcall = redis.call
local key = KEYS[1]
local now, limit, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost = tonumber(ARGV[4] or '1') or 1
local interval = period / limit

local tat = tonumber(rcall('GET', key) or '0') or 0
if tat < now then
  tat = now
end
local new_tat = tat + interval * cost
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
rcall('SET', key, string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now))
local remaining = math.floor((now - allow_at) / interval + 1e-9)
return {1, remaining, 0, math.ceil(new_tat - now)}
