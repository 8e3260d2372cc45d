-- loadtests/wrk/redirects.lua: the request stream of the benchmark, and exact counts.
--
-- Usage: wrk ... -s redirects.lua URL -- DATAFILE keep|close [OFFSET [DELAY_MS]]
-- DATAFILE holds one request head per line with header lines joined by TAB
-- (loadtests/workload.py writes it: every slug, realistic User-Agent / Referer /
-- Accept-Language headers, X-Forwarded-For from a few thousand client addresses). init()
-- turns each line into a complete request once (adding "Connection: close" in close mode),
-- so request() only hands out prebuilt strings, cycling through them.
--
-- Pacing: with DELAY_MS, each connection waits that many milliseconds on average after
-- an answer before its next request (wrk's delay(): whole milliseconds, so each pause is
-- the floor or the ceiling of DELAY_MS, chosen at random to keep the mean), which paces
-- C connections at about C * 1000 / (DELAY_MS + latency) requests a second.
--
-- Counts: `sent` (a global, read back from each thread in done()) is the number of
-- requests written; wrk's summary has the responses read and errors.status (answers >= 400).
-- done() prints one line "WRK_JSON {...}" with both and the latency percentiles (µs).

local requests = {}
local count = 0
local pos = 0
sent = 0

function init(args)
  local path = args[1]
  local close = args[2] == "close"
  for line in io.lines(path) do
    local head = line:gsub("\t", "\r\n")
    if close then
      head = head .. "\r\nConnection: close"
    end
    count = count + 1
    requests[count] = head .. "\r\n\r\n"
  end
  if count == 0 then
    error("no requests in " .. path)
  end
  pos = (tonumber(args[3]) or 0) % count
  local pause = tonumber(args[4])
  if pause ~= nil then
    local whole = math.floor(pause)
    local frac = pause - whole
    math.randomseed(os.time() + pos)
    -- defined here, in init(): wrk looks for delay() after init() has run
    delay = function()
      if math.random() < frac then
        return whole + 1
      end
      return whole
    end
  end
end

function request()
  pos = pos + 1
  if pos > count then
    pos = 1
  end
  sent = sent + 1
  return requests[pos]
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests_)
  local total_sent = 0
  for _, t in ipairs(threads) do
    total_sent = total_sent + (t:get("sent") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "sent": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, '
      .. '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, total_sent, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)
  ))
end
