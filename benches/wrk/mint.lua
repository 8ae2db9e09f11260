-- POST /v1/tokens with an empty JSON body (all defaults).
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("STREAMTOKEN_BENCH_KEY")
