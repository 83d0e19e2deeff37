-- Claim the telling of a Redis outage (ledger/outages.py): compare-and-set of the outage mark.
-- KEYS[1]: the outage mark. ARGV[1]: the mark this admin last read while Redis answered
-- ('' when it was missing then), ARGV[2]: a fresh mark.
-- Returns 1 when this admin tells it: the mark is still the one it read before the outage
-- (nobody has told this outage), or gone (Redis came back empty: nobody has yet).
local mark = redis.call('GET', KEYS[1])
if mark == false or mark == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
