-- Release: undo what one admission reserved for a request that was abandoned before it was
-- relayed (its client left while the admission was on its way to Redis). Idempotent: a hold
-- or slot that was never made, or is already released, is left alone. The rate windows keep
-- their count: the request did reach the gateway.
--
-- KEYS: nh pairs (budget counter hash, its holds zset), then concurrency sets (zset).
-- ARGV: req_id, nh, then the reserve of each hold.
-- SPENT and HELD, the counter field names, come first: ledger.settlement.lua_prelude.
local req_id = ARGV[1]
local nh = tonumber(ARGV[2])
for i = 1, nh do
  local reserve = ARGV[2 + i]
  if redis.call('ZREM', KEYS[2 * i], req_id .. ':' .. reserve) == 1 then
    redis.call('HINCRBY', KEYS[2 * i - 1], HELD, -tonumber(reserve))
  end
end
for i = 2 * nh + 1, #KEYS do
  redis.call('ZREM', KEYS[i], req_id)
end
return 0
