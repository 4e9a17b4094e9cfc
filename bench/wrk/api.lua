-- The benchmark's requests (wrk script). Arguments after "--":
--   mode:    post (a new message each request), hit (GETs of stored digests, in turn, from
--            the file given next), hot (GETs of one stored digest: the file's first line),
--            cold (GETs of stored digests, each once: the file's lines, split between wrk's
--            threads), miss (GETs of random unknown digests), miss1 (GETs of one unknown
--            digest from every connection: clients polling for a message not yet there),
--            mix (post, hit and miss in turn), plain (GET of the URL's own path)
--   file:    for hit, hot, cold and mix, a file with one digest per line
--   run id:  makes the posted messages of each run new
--   threads: wrk's --threads (cold: thread k of n takes lines k, k + n, ...); default 1
-- done() prints one JSON line with the counts and latency percentiles, in microseconds, and
-- "exhausted": requests a cold run made after its thread's digests ran out (sent as misses,
-- so they answer 404 and the run is invalid; a digest is never asked for twice).

-- Set in each thread by setup() (thread:set makes them globals of the thread's own state,
-- so they must not be declared local here); "overrun" is read back by done().
thread_id, overrun = 0, 0

local mode, digests, run_id, threads_total = "plain", {}, "0", 1
local counter, next_digest, hot_request = 0, 0, nil
local threads, started = {}, 0

function setup(thread)
  started = started + 1
  thread:set("thread_id", started)
  table.insert(threads, thread)
end

function init(args)
  mode, run_id = args[1] or mode, args[3] or run_id
  threads_total = tonumber(args[4]) or 1
  if mode == "hit" or mode == "mix" or mode == "hot" then
    for line in io.lines(args[2]) do
      digests[#digests + 1] = line
    end
    next_digest = thread_id * 7919  -- threads start at different digests
  elseif mode == "cold" then
    local i = 0
    for line in io.lines(args[2]) do
      if i % threads_total == thread_id - 1 then
        digests[#digests + 1] = line
      end
      i = i + 1
    end
  end
  if mode == "hot" then
    hot_request = wrk.format("GET", "/messages/" .. digests[1])
  end
  math.randomseed(os.time() * 1000 + thread_id)
end

local json_headers = { ["Content-Type"] = "application/json" }

local modes = { "post", "hit", "miss" }

local function unknown_digest()
  local parts = {}
  for i = 1, 8 do
    parts[i] = string.format("%08x", math.random(0, 0x7fffffff))
  end
  return table.concat(parts)
end

function request()
  counter = counter + 1
  local m = mode == "mix" and modes[counter % 3 + 1] or mode
  if m == "post" then
    local body = string.format('{"message": "bench %s %d %d"}', run_id, thread_id, counter)
    return wrk.format("POST", "/messages", json_headers, body)
  elseif m == "hot" then
    return hot_request
  elseif m == "hit" then
    next_digest = next_digest % #digests + 1
    return wrk.format("GET", "/messages/" .. digests[next_digest])
  elseif m == "cold" then
    next_digest = next_digest + 1
    local digest = digests[next_digest]
    if digest == nil then
      overrun = overrun + 1
      digest = unknown_digest()
    end
    return wrk.format("GET", "/messages/" .. digest)
  elseif m == "miss" then
    return wrk.format("GET", "/messages/" .. unknown_digest())
  elseif m == "miss1" then
    return wrk.format("GET", "/messages/" .. string.rep("d1ce57ed", 8))
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  local exhausted = 0
  for _, thread in ipairs(threads) do
    exhausted = exhausted + (tonumber(thread:get("overrun")) or 0)
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "exhausted": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, exhausted))
end
