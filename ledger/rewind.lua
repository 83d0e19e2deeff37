-- Redis is behind the ledger (ledger/rewind.py): zero the current periods' spend counters, in
-- one atomic step with noting the stream's last entry (the counters now hold exactly the
-- events after it), dropping the ready marker and starting a new epoch.
-- KEYS: ready, epoch, events, rolled_until, counted_after.
-- ARGV: the ledger's watermark (ms), a new epoch, the counters' key prefix, the number of
--       period tags, the tags, then the fields to zero.
-- Returns the stream's last entry id ('0-0' when empty), or false when Redis is not behind
-- (another admin already did this, or its counters are being rebuilt anyway).
local unpack = unpack or table.unpack  -- Lua 5.1 in Redis, 5.4 in the embedded backend
if redis.call('EXISTS', KEYS[1]) == 0
    or tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[1]) then
  return false
end
local ntags = tonumber(ARGV[4])
local fields = {}
for i = 5 + ntags, #ARGV do fields[#fields + 1] = ARGV[i] end
local function current(key)
  for i = 5, 4 + ntags do
    local tag = ':' .. ARGV[i]
    if key:sub(-#tag) == tag or key:find(tag .. ':x', 1, true) then return true end
  end
  return false
end
local cursor = '0'
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[3] .. '*', 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    -- Reservations (`held`) and threshold marks stay: they are not spend.
    if current(key) and redis.call('TYPE', key).ok == 'hash' then
      redis.call('HDEL', key, unpack(fields))
    end
  end
until cursor == '0'
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local after = last[1] and last[1][1] or '0-0'
redis.call('SET', KEYS[5], after)
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[4], ARGV[1])
return after
