-- wrk script for bench/serve_load.py: one request shape, optional request cap, a JSON summary.
--   BODY=<file> (POST with that body; GET without), CONTENT_TYPE, MAX_REQUESTS (per thread, 0 = no cap),
--   CAPPED (set by bench/harness.py: where to say a thread reached its cap),
--   INFERENCE_HEADER_LENGTH (for a V2 body with binary tensors)
local body_file = os.getenv("BODY")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"
end
local header_length = os.getenv("INFERENCE_HEADER_LENGTH")  -- V2 binary tensors: the JSON header's size
if header_length and header_length ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end
local cap = tonumber(os.getenv("MAX_REQUESTS") or "0")
local capped = os.getenv("CAPPED") or ""  -- a path: each thread makes <path>-<n> once it reached the cap
local count = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function response(status, headers, body)
  count = count + 1
  if cap > 0 and count >= cap then
    if count == cap and capped ~= "" then assert(io.open(capped .. "-" .. id, "w")):close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d, "non_2xx": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
