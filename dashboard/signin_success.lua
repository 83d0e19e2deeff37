-- A sign-in whose password was right (dashboard/accounts.py, SignInThrottle.succeeded): hand back
-- the attempt signin_attempt.lua counted, and forget this name's failures from this address.
-- KEYS[1]: the address's failure counter; KEYS[2]: (optional) the (name, address) hash
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  redis.call('DECR', KEYS[1])
end
if #KEYS > 1 then
  redis.call('DEL', KEYS[2])
end
return 0
