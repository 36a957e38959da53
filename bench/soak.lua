-- wrk script for the soak (bench/stress.py): every kind of request in turn, at a steady pace.
--   BODIES=<dir> holding predict-*.json and gradcheck.json; PACE_MS per connection between requests
local dir = os.getenv("BODIES")
local function body(name)
  local f = assert(io.open(dir .. "/" .. name, "rb")); local b = f:read("*a"); f:close(); return b
end
local json = {["Content-Type"] = "application/json"}
local plan = {
  {"POST", "/predict", json, body("predict-xor.json")},
  {"POST", "/predict", json, body("predict-mnist1.json")},
  {"POST", "/predict", json, body("predict-mnist32.json")},
  {"GET", "/models", {}, nil},
  {"POST", "/predict", json, body("predict-digits.json")},
  {"POST", "/v2/models/mnist/infer", {}, body("infer-mnist8.json")},
  {"GET", "/metrics", {}, nil},
  {"POST", "/predict", json, body("predict-mnist256.json")},
  {"POST", "/gradcheck", json, body("gradcheck.json")},
  {"GET", "/readyz", {}, nil},
}
local i = 0
function request()
  i = i % #plan + 1
  local p = plan[i]
  return wrk.format(p[1], p[2], p[3], p[4])
end
function delay() return tonumber(os.getenv("PACE_MS") or "20") end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "errors": %d, "non_2xx": %d, "p99_us": %d}\n', summary.requests,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(99)))
end
