-- Settlement: record a finished request once. Adds its cost and tokens to the period counters,
-- releases its reservations (holds, rate-window estimates, concurrency slot), records soft
-- threshold crossings once per period, and appends the usage event, all in one atomic step.
-- Idempotent per request id, so a spooled settlement can be replayed safely.
--
-- KEYS: the settled set of the request's minute, events stream, alerts stream, then nk period
--       counters (the first nd are daily ones that also count tokens), then nh holds zsets,
--       nw rate windows, nc concurrency sets.
-- ARGV: now_ms, req_id, settled_ttl, nk, nd, nh, nw, nc,
--       cost, then one amount per TOKEN_FIELDS name (Settlement.counted() order),
--       per counter: ttl
--       per hold: counter index (1-based among counters), reserved amount, cap (0 = none)
--       per window: d_requests, d_input, d_output, ttl
--       nt, then nt thresholds (percent)
--       then the event as field, value pairs
-- Returns 1, or 0 when this request id was already settled.
-- SPENT, HELD and TOKEN_FIELDS, the counter field names, come first: ledger.settlement.lua_prelude.
local unpack = unpack or table.unpack  -- Lua 5.1 in Redis, 5.4 in the embedded backend
local now = ARGV[1]
local req_id = ARGV[2]
if string.find(KEYS[1], ':done:', 1, true) then
  -- Spooled by a meterd that kept a key per request id (before the sets per minute).
  if not redis.call('SET', KEYS[1], now, 'NX', 'EX', tonumber(ARGV[3])) then
    return 0
  end
elseif redis.call('HSETNX', KEYS[1], req_id, 1) == 1 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]), 'NX')
else
  return 0
end
local nk, nd, nh, nw, nc = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7]), tonumber(ARGV[8])
local cost = tonumber(ARGV[9])
local window_fields = {'r', 'i', 'o'}
local a = 10 + #TOKEN_FIELDS

-- Every redis.call costs Redis CPU on the hot path, so a key gets its TTL only when this
-- call made it (HINCRBY answered the amount it added).
local function add(key, field, amount, ttl)
  local total = redis.call('HINCRBY', key, field, amount)
  if total == amount then redis.call('EXPIRE', key, ttl, 'NX') end
  return total
end

local base = 3
local spent_after = {}
for i = 1, nk do
  local counter = KEYS[base + i]
  spent_after[i] = add(counter, SPENT, cost, tonumber(ARGV[a]))
  if i <= nd then
    for f, field in ipairs(TOKEN_FIELDS) do
      local v = tonumber(ARGV[9 + f])
      if v ~= 0 then redis.call('HINCRBY', counter, field, v) end
    end
  end
  a = a + 1
end

local holds_at = a
local tbase = holds_at + 3 * nh + 4 * nw
local nt = tonumber(ARGV[tbase])
base = 3 + nk
for i = 1, nh do
  local index = tonumber(ARGV[a])
  local counter = KEYS[3 + index]
  local reserved, cap = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  -- A hold that expired was already released by admission; release only a live one.
  if reserved > 0 and redis.call('ZREM', KEYS[base + i], req_id .. ':' .. reserved) == 1 then
    redis.call('HINCRBY', counter, HELD, -reserved)
  end
  if cap > 0 then
    local spent = spent_after[index]
    local before = spent - cost
    for t = 1, nt do
      local pct = tonumber(ARGV[tbase + t])
      if before * 100 < pct * cap and spent * 100 >= pct * cap
        and redis.call('HSETNX', counter, 'w' .. pct, now) == 1 then
        redis.call('XADD', KEYS[3], '*', 'counter', counter, 'cap', cap, 'threshold', pct,
          'spent', spent, 'ts_ms', now, 'req_id', req_id)
      end
    end
  end
  a = a + 3
end

base = base + nh
for i = 1, nw do
  -- Only corrections that change something. A window outlived by its request is made
  -- again by its correction, and expires again.
  local key, ttl = KEYS[base + i], tonumber(ARGV[a + 3])
  for f, field in ipairs(window_fields) do
    local amount = tonumber(ARGV[a + f - 1])
    if amount ~= 0 then add(key, field, amount, ttl) end
  end
  a = a + 4
end

base = base + nw
for i = 1, nc do
  redis.call('ZREM', KEYS[base + i], req_id)
end

local event = {}
for i = tbase + nt + 1, #ARGV do
  event[#event + 1] = ARGV[i]
end
redis.call('XADD', KEYS[2], '*', unpack(event))
return 1
