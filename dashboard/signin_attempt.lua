-- One sign-in attempt (dashboard/accounts.py, SignInThrottle.attempt). It is counted before the
-- password is checked, so parallel guesses cannot slip past, and handed back by
-- signin_success.lua when the password was right: successes never use anything up.
-- KEYS[1]: failures from this client address under any name (a counter in a fixed window)
-- KEYS[2]: (optional) this account name from this address: a hash {fails, until}
-- ARGV: now (epoch s), per_address, window (s), free, backoff (s)
-- Returns 0 to go ahead, else the seconds to wait. A refusal changes nothing.
local now, per_address, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local free, backoff = tonumber(ARGV[4]), tonumber(ARGV[5])

local wait = 0
if tonumber(redis.call('GET', KEYS[1]) or '0') >= per_address then
  local ttl = redis.call('TTL', KEYS[1])
  wait = ttl > 0 and ttl or window
end
local fails = 0
if #KEYS > 1 then
  local state = redis.call('HMGET', KEYS[2], 'fails', 'until')
  fails = tonumber(state[1] or '0')
  local blocked = tonumber(state[2] or '0') - now
  if blocked > wait then wait = blocked end
end
if wait > 0 then
  return wait
end

if redis.call('INCR', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], window)
end
if #KEYS > 1 then
  -- The free tries used up, each failure doubles the wait before the next try, up to the
  -- window; a window without a failure forgets them.
  fails = fails + 1
  local delay = 0
  if fails >= free then
    delay = math.floor(math.min(backoff * 2 ^ (fails - free), window))
  end
  redis.call('HSET', KEYS[2], 'fails', fails, 'until', now + delay)
  redis.call('EXPIRE', KEYS[2], window + delay)
end
return 0
