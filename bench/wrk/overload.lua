-- make bench-overload's requests (wrk script): POSTs of new messages. Arguments after "--":
--   run id:  makes the posted messages of each run new
--   clients: "at-once" (default): every connection sends its next request as soon as it has
--            an answer, whatever it was (the worst case for an edge that sheds: a refusal
--            costs the client nothing); "retry-after": as the contract asks, a 503 or 429
--            makes its sender wait the answer's Retry-After (in seconds) first.
-- wrk asks delay() of the connection about to send, without saying which answer it had: the
-- waits owed by a thread's answers are paid by its next sends, one wait each. The same
-- number of waits, possibly taken by another connection of the thread.

local run_id, counter = "0", 0
local json_headers = {["Content-Type"] = "application/json"}
local owed = {}  -- waits in ms, one per refusal not yet waited for

function init(args)
  run_id = args[1] or run_id
  if args[2] == "retry-after" then
    -- Defined here, so that "at-once" runs have no delay() and no response(): wrk then
    -- neither parses the answers' headers nor times each send.
    function response(status, headers)
      if status == 503 or status == 429 then
        table.insert(owed, 1000 * (tonumber(headers["Retry-After"]) or 1))
      end
    end
    function delay()
      return table.remove(owed, 1) or 0
    end
  end
end

function request()
  counter = counter + 1
  local body = string.format('{"message": "overload %s %d"}', run_id, counter)
  return wrk.format("POST", "/messages", json_headers, body)
end
