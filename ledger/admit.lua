-- Admission: check every spend cap, rate window and concurrency limit that applies to a
-- request and, only if all pass, reserve on each of them. Atomic; a rejection reserves nothing.
--
-- KEYS: nb pairs (budget counter hash, its holds zset), then nw rate windows (hash), then nc
--       concurrency sets (zset), then the ready marker.
-- ARGV: now_ms, req_id, hold_expire_ms, nb, nw, nc,
--       per budget: cap, reserve, counter_ttl
--       per window: rpm, itpm, otpm, est_in, est_out, ttl   (a limit of 0 means none)
--       per concurrency set: limit
-- Returns {1, used per budget..., requests/input/output per window..., in flight per set...}
--      or {0, kind, index (1-based within its kind), used, limit}; for 'budget', one such
--         triple (index, used, limit) per blocking budget
--      or {-1} when the counters are not rebuilt yet (Redis came back empty).
-- SPENT and HELD, the counter field names, come first: ledger.settlement.lua_prelude.
local now = tonumber(ARGV[1])
local req_id = ARGV[2]
local hold_expire = tonumber(ARGV[3])
local nb, nw, nc = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local a = 7
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return {-1}
end

-- Expired holds belong to requests that never settled (a crashed proxy): drop them first.
-- This changes no live state, so it is not a mutation a rejection must avoid.
local function purge_holds(counter, holds)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  if #expired > 0 then
    local freed = 0
    for _, member in ipairs(expired) do
      freed = freed + tonumber(string.match(member, ':(%d+)$'))
    end
    redis.call('HINCRBY', counter, HELD, -freed)
    redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
  end
end

-- Every budget is checked, not just up to the first that blocks: the refusal names the one
-- that resets last (the gate knows the periods), so all blocking ones are returned.
local used, blocking = {}, {0, 'budget'}
for i = 1, nb do
  local counter, holds = KEYS[2 * i - 1], KEYS[2 * i]
  local cap, reserve = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  purge_holds(counter, holds)
  local v = redis.call('HMGET', counter, SPENT, HELD)
  local u = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
  if u + reserve > cap then
    local n = #blocking
    blocking[n + 1], blocking[n + 2], blocking[n + 3] = i, u, cap
  end
  used[i] = u
  a = a + 3
end
if #blocking > 2 then
  return blocking
end

local wbase = 2 * nb
local windows = {}
for i = 1, nw do
  local v = redis.call('HMGET', KEYS[wbase + i], 'r', 'i', 'o')
  local r, tin, tout = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  local rpm, itpm, otpm = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local est_in, est_out = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if rpm > 0 and r + 1 > rpm then return {0, 'rpm', i, r, rpm} end
  if itpm > 0 and tin + est_in > itpm then return {0, 'itpm', i, tin, itpm} end
  if otpm > 0 and tout + est_out > otpm then return {0, 'otpm', i, tout, otpm} end
  windows[i] = {r + 1, tin + est_in, tout + est_out}
  a = a + 6
end

local cbase = wbase + nw
local flying = {}
for i = 1, nc do
  local set = KEYS[cbase + i]
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
  local n = redis.call('ZCARD', set)
  local limit = tonumber(ARGV[a + i - 1])
  if n + 1 > limit then return {0, 'concurrency', i, n, limit} end
  flying[i] = n + 1
end

-- Every check passed: reserve.
local out = {1}
a = 7
for i = 1, nb do
  local counter, holds = KEYS[2 * i - 1], KEYS[2 * i]
  local reserve, ttl = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  -- Keys get their TTL when made, not on every call (each call is Redis CPU on the hot
  -- path). `held` equal to this reserve means no other live hold: the holds zset (deleted
  -- when it empties) is new, and so may be the counter. The TTLs outlast the period.
  if reserve > 0 then
    redis.call('ZADD', holds, hold_expire, req_id .. ':' .. reserve)
    if redis.call('HINCRBY', counter, HELD, reserve) == reserve then
      redis.call('EXPIRE', holds, ttl)
      redis.call('EXPIRE', counter, ttl, 'NX')
    end
  end
  out[#out + 1] = used[i]
  a = a + 3
end
for i = 1, nw do
  local key = KEYS[wbase + i]
  if redis.call('HINCRBY', key, 'r', 1) == 1 then  -- this minute's first request
    redis.call('EXPIRE', key, tonumber(ARGV[a + 5]), 'NX')
  end
  redis.call('HINCRBY', key, 'i', tonumber(ARGV[a + 3]))
  redis.call('HINCRBY', key, 'o', tonumber(ARGV[a + 4]))
  out[#out + 1] = windows[i][1]
  out[#out + 1] = windows[i][2]
  out[#out + 1] = windows[i][3]
  a = a + 6
end
for i = 1, nc do
  local set = KEYS[cbase + i]
  redis.call('ZADD', set, hold_expire, req_id)
  redis.call('PEXPIREAT', set, hold_expire)
  out[#out + 1] = flying[i]
end
return out
