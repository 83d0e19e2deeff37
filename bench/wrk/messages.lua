-- wrk load for the benchmarks: POST /v1/messages with a fixed body, Claude Code's headers,
-- and a credential: a gateway key (x-api-key), or a signed-in developer's access token (a JWT,
-- "eyJ…", sent as Claude Code's gateway mode sends it: Authorization: Bearer).
--
--   wrk -t1 -c64 -d10s -s bench/wrk/messages.lua URL -- BODY_FILE KEY RATE WINDOW_S [HEADERS_FILE]
--
-- RATE = 0: closed loop (each connection sends its next request as soon as the last one is
-- answered: saturation). RATE > 0: open loop at RATE requests/s (per thread), on a fixed
-- schedule that does not wait for answers as long as a connection is free (so use more
-- connections than RATE x latency).
--
-- Requests are sent for WINDOW_S seconds only; the rest of wrk's -d lets the last answers
-- arrive, so no request is in flight when wrk stops. That makes "requests completed" exact:
-- the benchmark compares it with the usage events meterd wrote to Redis.
--
-- done() prints one line "BENCH {json}" with the counts, the sending window and the latency
-- percentiles (microseconds) for the Python driver.

local ffi = require("ffi")
ffi.cdef [[
struct bench_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk_id, struct bench_timespec *tp);
]]
local ts = ffi.new("struct bench_timespec")
local CLOCK_MONOTONIC = 1

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

-- Thread state (each wrk thread has its own Lua state).
local interval_ms = 0 -- 0: closed loop
local window_ms = 0
local started = nil
local stop_at = nil
local slot = 0
first_ms = -1 -- read by done() through thread:get
last_ms = -1
sent = 0

function init(args)
  wrk.method = "POST"
  wrk.path = "/v1/messages"
  wrk.body = read_file(args[1])
  if args[2]:sub(1, 3) == "eyJ" then
    wrk.headers["Authorization"] = "Bearer " .. args[2]
  else
    wrk.headers["x-api-key"] = args[2]
  end
  local rate = tonumber(args[3])
  window_ms = tonumber(args[4]) * 1000
  if rate > 0 then
    interval_ms = 1000 / rate
  end
  if args[5] and args[5] ~= "" then
    for line in io.lines(args[5]) do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name then
        wrk.headers[name] = value
      end
    end
  end
end

function delay()
  local now = now_ms()
  if started == nil then
    started = now
    stop_at = now + window_ms
    first_ms = now
  end
  if now >= stop_at then
    -- This call follows an answer (or is a connection's first request): record when the
    -- last answer came, then park the connection for good.
    last_ms = now
    return 3600000
  end
  sent = sent + 1
  if interval_ms == 0 then
    return 0
  end
  local due = started + slot * interval_ms
  slot = slot + 1
  if due <= now then
    return 0
  end
  return math.floor(due - now + 0.5)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local first, last, total_sent = nil, nil, 0
  for _, t in ipairs(threads) do
    local f, l = t:get("first_ms"), t:get("last_ms")
    total_sent = total_sent + t:get("sent")
    if f >= 0 and (first == nil or f < first) then first = f end
    if l >= 0 and (last == nil or l > last) then last = l end
  end
  local e = summary.errors
  local out = {
    string.format('"requests":%d', summary.requests),
    string.format('"sent":%d', total_sent),
    string.format('"non_2xx":%d', e.status),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}',
      e.connect, e.read, e.write, e.timeout),
    string.format('"window_ms":%.3f', (first and last) and (last - first) or -1),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"mean_us":%.1f', latency.mean),
    string.format('"max_us":%d', latency.max),
  }
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    table.insert(out, string.format('"p%s_us":%d', tostring(p), latency:percentile(p)))
  end
  io.write("BENCH {" .. table.concat(out, ",") .. "}\n")
end
