-- POST /v1/tokens/redeem where every request redeems a distinct pre-minted token: each wrk
-- thread takes its own slice of the file (line i goes to thread i % threads).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local threads_total = tonumber(os.getenv("STREAMTOKEN_BENCH_THREADS"))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("STREAMTOKEN_BENCH_KEY")
  -- Each request is formatted here, once, not per request: wrk shares the two cores with the
  -- server, and formatting in Lua per request cost it about 4 us of CPU a redemption (against
  -- under 1 us for a fixed mint request), which the server's figure then paid for.
  requests = {}
  local i = 0
  for line in io.lines(os.getenv("STREAMTOKEN_BENCH_TOKENS")) do
    if i % threads_total == id then
      requests[#requests + 1] = wrk.format(nil, nil, nil, '{"token":"' .. line .. '"}')
    end
    i = i + 1
  end
  next_request = 1
end

function request()
  local formatted = requests[next_request]
  next_request = next_request + 1
  if next_request > #requests then next_request = 1 end
  return formatted
end
