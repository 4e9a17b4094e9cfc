-- Realistic traffic for the dashboards (wrk script; `make load`, or the compose profile
-- "load"): mostly reads of stored messages, some new messages, some lookups of unknown
-- digests (404) and some bad requests (400, 415), at a gentle pace.
-- Arguments after "--": the pause in milliseconds before each request, per connection.

local pause_ms = 100
local digests = {}
local thread_id = 0
local counter = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("thread_id", thread_id)
end

function init(args)
  pause_ms = tonumber(args[1]) or pause_ms
  math.randomseed(os.time() + (thread_id or 0))
end

function delay()
  return pause_ms
end

local function post(content_type, body)
  return wrk.format("POST", "/messages", { ["Content-Type"] = content_type }, body)
end

function request()
  counter = counter + 1
  local roll = math.random(100)
  if roll <= 25 or #digests == 0 then
    return post("application/json",
      string.format('{"message": "load %d-%d-%d"}', thread_id or 0, os.time(), counter))
  elseif roll <= 85 then
    return wrk.format("GET", "/messages/" .. digests[math.random(#digests)])
  elseif roll <= 93 then
    return wrk.format("GET", "/messages/" .. string.format("%064x", math.random(1, 2 ^ 31)))
  elseif roll <= 97 then
    return post("application/json", '{"msg": "no message field"}')
  else
    return post("text/plain", "not json")
  end
end

function response(status, headers, body)
  if status == 201 and #digests < 2000 then
    local digest = body:match('"digest":"(%x+)"')
    if digest then
      table.insert(digests, digest)
    end
  end
end
