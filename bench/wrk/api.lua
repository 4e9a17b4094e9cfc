-- The benchmark's requests (wrk script). Arguments after "--":
--   mode:    post (a new message each request), hit (GETs of stored digests, read from
--            the file given next), miss (GETs of random unknown digests), mix (the three
--            in turn), plain (GET of the URL's own path)
--   file:    for hit, a file with one digest per line
--   run id:  makes the posted messages of each run new
-- done() prints one JSON line with the counts and latency percentiles, in microseconds.

local mode, digests, run_id = "plain", {}, "0"
local thread_id, counter, next_digest = 0, 0, 0
local threads = {}

function setup(thread)
  thread_id = thread_id + 1
  thread:set("thread_id", thread_id)
  table.insert(threads, thread)
end

function init(args)
  mode, run_id = args[1] or mode, args[3] or run_id
  if mode == "hit" or mode == "mix" then
    for line in io.lines(args[2]) do
      digests[#digests + 1] = line
    end
    next_digest = thread_id * 7919  -- threads start at different digests
  end
  math.randomseed(os.time() * 1000 + thread_id)
end

local json_headers = { ["Content-Type"] = "application/json" }

local modes = { "post", "hit", "miss" }

function request()
  counter = counter + 1
  local m = mode == "mix" and modes[counter % 3 + 1] or mode
  if m == "post" then
    local body = string.format('{"message": "bench %s %d %d"}', run_id, thread_id, counter)
    return wrk.format("POST", "/messages", json_headers, body)
  elseif m == "hit" then
    next_digest = next_digest % #digests + 1
    return wrk.format("GET", "/messages/" .. digests[next_digest])
  elseif m == "miss" then
    local parts = {}
    for i = 1, 8 do
      parts[i] = string.format("%08x", math.random(0, 0x7fffffff))
    end
    return wrk.format("GET", "/messages/" .. table.concat(parts))
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
