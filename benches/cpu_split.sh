#!/usr/bin/env bash
# Where the two cores go during a redeem run: CPU seconds of wrk, the server, and (with
# STORE=redis) redis-server over one wrk run, from /proc/<pid>/stat (user + system ticks), beside
# the requests served. Usage: STORE=memory|redis bash benches/cpu_split.sh
# (release build; ~200,000 tokens minted offline; 5 s of wrk -t2 -c64.)
set -euo pipefail
cd "$(dirname "$0")/.."
store="${STORE:-redis}"
cargo build --release --quiet --bin streamtoken
bin=target/release/streamtoken
work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"

export STREAMTOKEN_KEYS_DIR="$work/keys"
key="$("$bin" keys init | tail -n 1)"
env=()
if [ "$store" = redis ]; then
    redis_port="$(free_port)"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no > "$work/redis.log" 2>&1 &
    redis_pid=$!; pids+=("$redis_pid")
    for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
    env=(STREAMTOKEN_REDIS_URL="redis://127.0.0.1:$redis_port/")
fi
"$bin" mint --org dev --ttl 3600 --count "${TOKENS:-400000}" > "$work/tokens.txt"
port="$(free_port)"
env STREAMTOKEN_BIND="127.0.0.1:$port" STREAMTOKEN_RATE_PER_MINUTE=100000000 RUST_LOG=warn "${env[@]}" \
    "$bin" serve > "$work/server.out" 2>&1 &
server_pid=$!; pids+=("$server_pid")
for _ in $(seq 1 200); do grep -q "listening on" "$work/server.out" 2>/dev/null && break; sleep 0.05; done

export STREAMTOKEN_BENCH_KEY="$key" STREAMTOKEN_BENCH_THREADS=2 STREAMTOKEN_BENCH_TOKENS="$work/tokens.txt"
wrk -t2 -c64 -d5s -s benches/wrk/redeem.lua "http://127.0.0.1:$port/v1/tokens/redeem" > "$work/wrk.out" &
wrk_pid=$!
sleep 1 # wrk formats its requests first; measure the load only
server_0="$(ticks "$server_pid")"; wrk_0="$(ticks "$wrk_pid")"
redis_0=0; [ "$store" = redis ] && redis_0="$(ticks "$redis_pid")"
busy_0="$(awk '/^cpu / {print $2+$3+$4+$6+$7+$8}' /proc/stat)"; idle_0="$(awk '/^cpu / {print $5}' /proc/stat)"
sleep 3
server_1="$(ticks "$server_pid")"; wrk_1="$(ticks "$wrk_pid")"
redis_1=0; [ "$store" = redis ] && redis_1="$(ticks "$redis_pid")"
busy_1="$(awk '/^cpu / {print $2+$3+$4+$6+$7+$8}' /proc/stat)"; idle_1="$(awk '/^cpu / {print $5}' /proc/stat)"
wait "$wrk_pid"
rps="$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")"
python3 - "$hz" "$rps" "$store" \
    $((server_1 - server_0)) $((wrk_1 - wrk_0)) $((redis_1 - redis_0)) \
    $((busy_1 - busy_0)) $((idle_1 - idle_0)) <<'PY'
import sys
hz, rps, store = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
server, wrk, redis, busy, idle = (int(v) / hz for v in sys.argv[4:9])
total = busy + idle
print(f"redeem, {store} store: {rps:,.0f} req/s; of the 2 cores over 3 s of load:")
for name, secs in [("streamtoken", server), ("wrk", wrk), ("redis-server", redis),
                   ("everything else (kernel softirq, other processes)", busy - server - wrk - redis),
                   ("idle", idle)]:
    if name == "redis-server" and store != "redis":
        continue
    print(f"  {name}: {100 * secs / total:.0f}% ({1e6 * secs / (rps * 3):.1f} us per request)")
PY
