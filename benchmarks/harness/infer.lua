-- wrk script: POST one fixed KServe v2 inference request, count non-200
-- responses, and print the result as one JSON line from done().
--
--   wrk ... -s infer.lua URL -- BODY_FILE JSON_HEADER_LEN PATH
--
-- BODY_FILE holds the request body: the JSON inference header followed by the
-- raw tensor bytes (binary tensor data extension); JSON_HEADER_LEN is the
-- length of the JSON part, sent as Inference-Header-Content-Length.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.path = args[3]
  wrk.body = body
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = args[2]
  non200 = 0
  first_error = ""
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    if first_error == "" then
      first_error = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

local function clean(s)
  s = string.gsub(s, "[^%w%s%p]", "?")
  s = string.gsub(s, "[\"\\]", "'")
  s = string.gsub(s, "%s", " ")
  return s
end

function done(summary, latency, requests)
  local bad, first = 0, ""
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non200") or 0)
    local fe = t:get("first_error")
    if first == "" and fe and fe ~= "" then first = fe end
  end
  local e = summary.errors
  io.write(string.format(
    'NAIAD_WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non200":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_min_us":%d,"lat_mean_us":%.1f,"lat_stdev_us":%.1f,"lat_max_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"first_error":"%s"}\n',
    summary.requests, summary.duration, summary.bytes, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), clean(first)))
end
