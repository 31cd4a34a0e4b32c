-- POST /v1/reservations, one new order per request (python -m loadtests.bench).
--
--   wrk ... -s loadtests/wrk/reserve.lua http://HOST:PORT/v1/reservations -- RUN KEY SKU
--
-- Every request carries a new order id and a new Idempotency-Key. wrk seeds
-- math.random identically in every run, so ids are built from RUN (a token the caller
-- makes unique per run), os.time(), the thread's index and a per-thread counter:
-- no two requests of any run share an id. Answers are counted by status; done()
-- prints one line "ONHAND_WRK {json}" with the counts and the latency percentiles.

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("tid", #threads)
end

statuses = {}
local counter = 0
local prefix, headers, sku

function init(args)
  prefix = string.format("%s-%d-%d", args[1], os.time(), tid or 0)
  sku = args[3]
  headers = {
    ["Authorization"] = "Bearer " .. args[2],
    ["Content-Type"] = "application/json",
  }
end

function request()
  counter = counter + 1
  local id = prefix .. "-" .. counter
  headers["Idempotency-Key"] = id
  local body = '{"order_id":"' .. id .. '","lines":[{"sku":"' .. sku .. '","qty":1}]}'
  return wrk.format("POST", nil, headers, body)
end

function response(status, _, _)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, _)
  local total, parts = {}, {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses") or {}) do
      total[code] = (total[code] or 0) + n
    end
  end
  for code, n in pairs(total) do
    parts[#parts + 1] = string.format('"%d":%d', code, n)
  end
  local e = summary.errors
  io.write(string.format(
    'ONHAND_WRK {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), table.concat(parts, ",")))
end
