-- wrk script of `make bench`: POSTs the small chat request, rotating over the access keys listed
-- (one per line) in the file named by BENCH_KEYS_FILE, and prints a JSON summary line at the end.
-- BENCH_MODEL picks the model (default demo-chat); BENCH_ACCEPT_ENCODING, when set, is sent as
-- Accept-Encoding.
local body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "demo-chat") ..
  '","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'
local requests = {}
local next_request = 1

function init(args)
  local keys = {}
  local path = os.getenv("BENCH_KEYS_FILE")
  if path then
    for line in io.lines(path) do
      if line ~= "" then keys[#keys + 1] = line end
    end
  end
  if #keys == 0 then keys[1] = "sk-bench-direct" end
  for i, key in ipairs(keys) do
    local headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. key,
    }
    local encoding = os.getenv("BENCH_ACCEPT_ENCODING")
    if encoding then headers["Accept-Encoding"] = encoding end
    requests[i] = wrk.format("POST", nil, headers, body)
  end
  -- threads start at different keys so that they do not move in lock step
  next_request = (math.random(1, #requests))
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
