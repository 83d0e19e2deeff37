-- Admit one OTLP export of a developer under the per-minute limit and queue its rows.
-- KEYS[1] the developer's telemetry window for this minute, KEYS[2] the telemetry stream.
-- ARGV[1] limit per minute, ARGV[2] window TTL (s), ARGV[3] stream MAXLEN (approximate),
-- ARGV[4..] the entry's field/value pairs.
-- Returns the stream entry id, or false when over the limit (then nothing is written).
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then
  return false
end
if redis.call('INCR', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
