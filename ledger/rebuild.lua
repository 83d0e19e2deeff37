-- The rebuild's commit (ledger/rebuild.py): add DuckDB's sums to the counters and set the ready
-- marker, in one step, unless another admin rebuilt meanwhile. A script runs the same on a
-- single Redis, behind Sentinel and on a Cluster (all keys share the deployment's hash tag).
-- KEYS: ready, counted_after, events, then the counters.
-- ARGV: per counter: its TTL (s), its number of fields, field, amount pairs (no zero amount);
--       then the stream entries to delete (in DuckDB and counted once now).
-- Returns 1, or 0 when the marker was already set.
local unpack = unpack or table.unpack  -- Lua 5.1 in Redis, 5.4 in the embedded backend
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local at = 1
for k = 4, #KEYS do
  local ttl, nfields = ARGV[at], tonumber(ARGV[at + 1])
  for i = at + 2, at + 2 * nfields, 2 do
    redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1])
  end
  redis.call('EXPIRE', KEYS[k], ttl, 'NX')
  at = at + 2 + 2 * nfields
end
for first = at, #ARGV, 1000 do  -- Lua 5.1 unpacks at most about 8,000 values at once
  redis.call('XDEL', KEYS[3], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], 1)
return 1
