-- The rollup lock (ledger/rollup.py), compare-and-set in one script: a script runs the same on
-- a single Redis, behind Sentinel and on a Cluster (all keys share the deployment's hash tag),
-- where redis-py's Cluster pipelines cannot read inside a WATCH.
-- KEYS: the lock, then (ack) the event stream.
-- ARGV: our token, the action, then
--   take:    the TTL (ms): take the lock if free, renew it if ours;
--   release: -: delete it if ours;
--   ack:     the consumer group, then entry ids: acknowledge and delete them if the lock is ours.
-- Returns 1 if the lock was (or is now) ours, else 0.
local unpack = unpack or table.unpack  -- Lua 5.1 in Redis, 5.4 in the embedded backend
local holder, token, action = redis.call('GET', KEYS[1]), ARGV[1], ARGV[2]
if holder and holder ~= token then
  return 0
end
if action == 'take' then
  redis.call('SET', KEYS[1], token, 'PX', ARGV[3])
  return 1
end
if not holder then
  return 0
end
if action == 'release' then
  redis.call('DEL', KEYS[1])
elseif action == 'ack' then
  for first = 4, #ARGV, 1000 do  -- Lua 5.1 unpacks at most about 8,000 values at once
    local last = math.min(first + 999, #ARGV)
    redis.call('XACK', KEYS[2], ARGV[3], unpack(ARGV, first, last))
    redis.call('XDEL', KEYS[2], unpack(ARGV, first, last))
  end
end
return 1
