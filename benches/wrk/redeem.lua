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
  tokens = {}
  local i = 0
  for line in io.lines(os.getenv("STREAMTOKEN_BENCH_TOKENS")) do
    if i % threads_total == id then
      tokens[#tokens + 1] = line
    end
    i = i + 1
  end
  next_token = 1
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("STREAMTOKEN_BENCH_KEY")
end

function request()
  local token = tokens[next_token]
  next_token = next_token + 1
  if next_token > #tokens then next_token = 1 end
  return wrk.format(nil, nil, nil, '{"token":"' .. token .. '"}')
end
