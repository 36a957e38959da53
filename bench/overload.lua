-- wrk script for bench/overload.py: one-sample POST requests, each with an optional deadline, every answer
-- classified by the client's own clock (sent -> answered, LuaJIT's clock_gettime through its FFI). The send
-- time travels in X-Request-ID, which the server echoes, so no per-connection state is needed.
--   BODY=<file>, DEADLINE_US (answers later than it are late; 0: none), SEND_DEADLINE (1: as an
--   X-Timeout-Microseconds header; 0: judge by it without telling the server), PATH_ (default /predict),
--   HONOUR_RETRY_AFTER (1: after a 503, wait its Retry-After and a random jitter of up to as much again before
--   the next request, as clients with a retry policy do; 0: send the next at once, a retry storm),
--   WARMUP_S (answers to requests sent in each thread's first seconds are left out of the counts: the
--   connections all open at once, a burst no steady load has; counted apart as "warmup")
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } nn_timespec; int clock_gettime(int, nn_timespec *); ]]
local ts = ffi.new("nn_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local f = assert(io.open(os.getenv("BODY"), "rb"))
local body = f:read("*a")
f:close()
local deadline = tonumber(os.getenv("DEADLINE_US") or "0")
local send_deadline = (os.getenv("SEND_DEADLINE") or "1") ~= "0"
local path = os.getenv("PATH_") or "/predict"
local honour = (os.getenv("HONOUR_RETRY_AFTER") or "0") ~= "0"
-- wrk asks delay() before each connection's next request, after that connection's response(), but other
-- connections' responses can come between the two: so each response queues its wait and each delay()
-- takes the oldest. Every 503 is followed by exactly one wait of its Retry-After; which of this thread's
-- connections sits it out can differ, and the connections are alike. This holds while no connection
-- breaks: one reconnected during its wait is asked delay() again (bench/overload.py keeps the server's
-- KEEPALIVE above the longest wait, and counts any socket error as a failed request).
local warmup_us = math.floor(tonumber(os.getenv("WARMUP_S") or "0") * 1000000)
local waits, first_wait, last_wait = {}, 1, 0
if honour then
  function delay()
    if first_wait > last_wait then return 0 end
    local ms = waits[first_wait]
    waits[first_wait] = nil
    first_wait = first_wait + 1
    return ms
  end
end
local BUCKET_US, BUCKETS = 250, 2000  -- latency histograms: 0.25 ms buckets up to 500 ms (the last: beyond)

local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args)
  math.randomseed(now_us())
  started_us = now_us()
  warmup = 0
  counts = {ok_in_time = 0, ok_late = 0, refused = 0, expired = 0, other = 0}
  refused_hist, ok_hist = {}, {}
  worst_over_us = -1000000000  -- the latest any answer came after its deadline
end

function request()
  local headers = {["Content-Type"] = "application/json", ["X-Request-ID"] = tostring(now_us())}
  if deadline > 0 and send_deadline then headers["X-Timeout-Microseconds"] = tostring(deadline) end
  return wrk.format("POST", path, headers, body)
end

local function add(hist, us)
  local b = math.min(math.floor(us / BUCKET_US), BUCKETS)
  hist[b] = (hist[b] or 0) + 1
end

function response(status, headers, _)
  if honour then
    local after = status == 503 and tonumber(headers["Retry-After"] or headers["retry-after"] or "") or 0
    last_wait = last_wait + 1
    waits[last_wait] = math.floor(after * 1000 * (1 + math.random()))
  end
  local sent = tonumber(headers["X-Request-ID"] or headers["x-request-id"] or "")
  if sent == nil then counts.other = counts.other + 1 return end
  local us = now_us() - sent
  if sent < started_us + warmup_us then warmup = warmup + 1 return end
  if deadline > 0 and us - deadline > worst_over_us then worst_over_us = us - deadline end
  if status == 200 then
    add(ok_hist, us)
    if deadline == 0 or us <= deadline then counts.ok_in_time = counts.ok_in_time + 1
    else counts.ok_late = counts.ok_late + 1 end
  elseif status == 503 then counts.refused = counts.refused + 1 add(refused_hist, us)
  elseif status == 504 then counts.expired = counts.expired + 1
  else counts.other = counts.other + 1 end
end

local function merge(into, from) for k, v in pairs(from) do into[k] = (into[k] or 0) + v end end

local function percentile(hist, p)
  local total = 0
  for _, v in pairs(hist) do total = total + v end
  if total == 0 then return -1 end
  local seen = 0
  for b = 0, BUCKETS do
    seen = seen + (hist[b] or 0)
    if seen >= p / 100 * total then return (b + 1) * BUCKET_US end
  end
  return -1
end

function done(summary, latency, requests)
  local all, refused, ok, worst, warm = {}, {}, {}, -1000000000, 0
  for _, t in ipairs(threads) do
    merge(all, t:get("counts"))
    merge(refused, t:get("refused_hist"))
    merge(ok, t:get("ok_hist"))
    worst = math.max(worst, t:get("worst_over_us"))
    warm = warm + t:get("warmup")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "ok_in_time": %d, "ok_late": %d, "refused": %d, "expired": %d, ' ..
    '"other": %d, "socket_errors": %d, "timeouts": %d, "refused_p99_us": %d, "ok_p50_us": %d, "ok_p99_us": %d, ' ..
    '"worst_after_deadline_us": %d, "warmup": %d}\n',
    summary.requests, summary.duration, all.ok_in_time or 0, all.ok_late or 0, all.refused or 0, all.expired or 0,
    all.other or 0, e.connect + e.read + e.write, e.timeout, percentile(refused, 99), percentile(ok, 50),
    percentile(ok, 99), worst, warm))
end
