#!/usr/bin/env bash
# `make bench`: one run, one table. Criterion micro-benchmarks (one core), then HTTP load on
# loopback with wrk (64 connections, bounded runs), then the memory store's footprint.
# Every HTTP figure is from this run; each ratio is to a bare actix-web server (benches/ceiling.rs)
# measured right before it.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${BENCH_DURATION:-5s}"
connections="${BENCH_CONNECTIONS:-64}"
threads="${BENCH_THREADS:-2}"
tokens_per_run="${BENCH_TOKENS:-1250000}"

if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk (Debian package)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk
fi
if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server
fi

echo "building release…"
cargo build --release --quiet --bin streamtoken --example memory_footprint --example ws_frames --example ceiling
bin=target/release/streamtoken
work="$(mktemp -d)"
server_pid=""; redis_pid=""; cluster_pids=(); upstream_pid=""; ceiling_pid=""
cleanup() {
    [ -n "$ceiling_pid" ] && kill "$ceiling_pid" 2>/dev/null
    [ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null
    for pid in "${cluster_pids[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

export STREAMTOKEN_KEYS_DIR="$work/keys"
key="$("$bin" keys init | tail -n 1)"
export STREAMTOKEN_BENCH_KEY="$key" STREAMTOKEN_BENCH_THREADS="$threads"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_server() { # extra env as arguments
    local port; port="$(free_port)"
    env STREAMTOKEN_BIND="127.0.0.1:$port" STREAMTOKEN_RATE_PER_MINUTE=100000000 \
        STREAMTOKEN_WORKERS="${BENCH_WORKERS:-$(nproc)}" RUST_LOG=warn "$@" \
        "$bin" serve > "$work/server.out" 2> "$work/server.err" &
    server_pid=$!
    for _ in $(seq 1 200); do grep -q "listening on" "$work/server.out" 2>/dev/null && break; sleep 0.05; done
    base="http://127.0.0.1:$port"
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$server_pid/status"; }

rows=()
ceiling=""; ceiling_p99=""
declare -A rps_of ratio_of
# wrk's latency ("845.00us", "5.45ms", "1.20s") in milliseconds.
to_ms() { python3 -c "v='$1'; print(float(v[:-2])/1000 if v.endswith('us') else float(v[:-2]) if v.endswith('ms') else float(v[:-1])*1000)"; }

# The ceiling: a bare actix-web server (benches/ceiling.rs, fixed JSON body, no middleware, the
# same workers), measured right before every run (A B A B …) so each ratio compares like with like.
ceiling_port="$(free_port)"
target/release/examples/ceiling "127.0.0.1:$ceiling_port" "${BENCH_WORKERS:-$(nproc)}" > "$work/ceiling.out" &
ceiling_pid=$!
for _ in $(seq 1 200); do grep -q "listening on" "$work/ceiling.out" 2>/dev/null && break; sleep 0.05; done
ceiling_runs=()
measure_ceiling() {
    wrk -t"$threads" -c"$connections" -d"$duration" --latency "http://127.0.0.1:$ceiling_port/" > "$work/ceiling.txt"
    ceiling="$(awk '/Requests\/sec/ {print $2}' "$work/ceiling.txt")"
    ceiling_p99="$(awk '$1=="99%" {print $2}' "$work/ceiling.txt")"
    ceiling_runs+=("$ceiling/$ceiling_p99")
}

# run NAME URL [wrk args…]: the ceiling, then one bounded wrk run; records req/s, p50, p99, the
# ratio to the ceiling just measured, p99 against the ceiling's, and the server's peak RSS.
run() {
    local name="$1" url="$2"; shift 2
    measure_ceiling
    wrk -t"$threads" -c"$connections" -d"$duration" --latency "$@" "$url" > "$work/wrk.txt"
    local rps p50 p99 non2xx
    rps="$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")"
    p50="$(awk '$1=="50%" {print $2}' "$work/wrk.txt")"
    p99="$(awk '$1=="99%" {print $2}' "$work/wrk.txt")"
    non2xx="$(awk '/Non-2xx/ {print $NF}' "$work/wrk.txt")"
    local ratio p99_ratio
    ratio="$(python3 -c "print(f'{$rps/$ceiling:.2f}')")"
    p99_ratio="$(python3 -c "print(f'{$(to_ms "$p99")/$(to_ms "$ceiling_p99"):.1f}×')")"
    rps_of["$name"]="$rps"
    ratio_of["$name"]="$ratio"
    rows+=("| $name | $(printf '%.0f' "$rps") | $p50 | $p99 | $ratio | $p99_ratio | $(peak_rss_mib) MiB | ${non2xx:-0} |")
    echo "  $name: $(printf '%.0f' "$rps") req/s ($ratio of the ceiling's $(printf '%.0f' "$ceiling")), p50 $p50, p99 $p99 ($p99_ratio the ceiling's $ceiling_p99), non-2xx ${non2xx:-0}"
}

echo "== criterion (in-process, one core)"
cargo bench --quiet --bench tokens -- --output-format bencher 2> /dev/null | tee "$work/criterion.txt" | grep "^test" || true
micro_rows=()
while read -r _ name _ _ ns _; do
    ns="${ns//,/}"
    micro_rows+=("| ${name#tokens/} | $(python3 -c "print(f'{1e9/$ns:,.0f}')") | $ns ns |")
done < <(grep "^test" "$work/criterion.txt")

echo "== HTTP load: wrk -t$threads -c$connections -d$duration on loopback"
start_server
run "GET /healthz (fixed body through our middleware)" "$base/healthz"
run "POST /v1/tokens (mint)" "$base/v1/tokens" -s benches/wrk/mint.lua
run "GET /v3/token (mint, AssemblyAI)" "$base/v3/token?expires_in_seconds=60" -H "Authorization: $key"
stop_server

echo "minting $tokens_per_run tokens offline for the redeem runs…"
"$bin" mint --org dev --ttl 3600 --count "$tokens_per_run" > "$work/tokens-memory.txt"
export STREAMTOKEN_BENCH_TOKENS="$work/tokens-memory.txt"
start_server
run "POST /v1/tokens/redeem (memory store)" "$base/v1/tokens/redeem" -s benches/wrk/redeem.lua
stop_server

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no > "$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
"$bin" mint --org dev --ttl 3600 --count "$tokens_per_run" > "$work/tokens-redis.txt"
export STREAMTOKEN_BENCH_TOKENS="$work/tokens-redis.txt"
start_server STREAMTOKEN_REDIS_URL="redis://127.0.0.1:$redis_port/"
run "POST /v1/tokens/redeem (Redis store)" "$base/v1/tokens/redeem" -s benches/wrk/redeem.lua
stop_server
start_server STREAMTOKEN_REDIS_URL="redis://127.0.0.1:$redis_port/" STREAMTOKEN_RATE_LIMIT_SCOPE=process
run "POST /v1/tokens (mint, Redis store, process quota)" "$base/v1/tokens" -s benches/wrk/mint.lua
stop_server
start_server STREAMTOKEN_REDIS_URL="redis://127.0.0.1:$redis_port/"
run "POST /v1/tokens (mint, Redis store, fleet quota)" "$base/v1/tokens" -s benches/wrk/mint.lua
stop_server

echo "starting a 3-master Redis Cluster…"
seeds=()
# A cluster node also listens on port + 10000 (its bus), so take ports with room above them.
cluster_port() { local p; while :; do p="$(free_port)"; [ "$p" -le 55535 ] && echo "$p" && return; done; }
for _ in 1 2 3; do
    port="$(cluster_port)"; mkdir -p "$work/cluster-$port"
    (cd "$work/cluster-$port" && exec redis-server --port "$port" --bind 127.0.0.1 --save "" \
        --appendonly no --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout 1000 > redis.log 2>&1) &
    cluster_pids+=($!); seeds+=("127.0.0.1:$port")
done
for seed in "${seeds[@]}"; do
    for _ in $(seq 1 100); do redis-cli -p "${seed#*:}" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
done
redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes > "$work/cluster.log"
for _ in $(seq 1 200); do redis-cli -p "${seeds[0]#*:}" cluster info | grep -q "cluster_state:ok" && break; sleep 0.05; done
"$bin" mint --org dev --ttl 3600 --count "$tokens_per_run" > "$work/tokens-cluster.txt"
export STREAMTOKEN_BENCH_TOKENS="$work/tokens-cluster.txt"
cluster_urls="$(printf 'redis://%s,' "${seeds[@]}")"
start_server STREAMTOKEN_REDIS_CLUSTER_URLS="${cluster_urls%,}"
run "POST /v1/tokens/redeem (Redis Cluster, 3 masters)" "$base/v1/tokens/redeem" -s benches/wrk/redeem.lua
stop_server

echo "== WebSocket frames: through a proxy route vs direct to the upstream"
frames=target/release/examples/ws_frames
upstream_port="$(free_port)"
"$frames" serve "$upstream_port" > "$work/upstream.log" 2>&1 &
upstream_pid=$!
for _ in $(seq 1 100); do grep -q "echo upstream" "$work/upstream.log" 2>/dev/null && break; sleep 0.05; done
seconds="${duration%s}"
direct_fps="$("$frames" load "ws://127.0.0.1:$upstream_port/" "$seconds" | sed -n 's/frames_per_second=//p')"
"$bin" mint --org dev --ttl 3600 --count 64 > "$work/ws-tokens.txt"
start_server STREAMTOKEN_PROXY="/relay=ws://127.0.0.1:$upstream_port/"
proxied_fps="$("$frames" load "ws://${base#http://}/relay" "$seconds" "$work/ws-tokens.txt" | sed -n 's/frames_per_second=//p')"
stop_server
echo "  direct: $direct_fps frames/s, through the proxy: $proxied_fps frames/s"

echo "== connection storm: sessions opened 200 at a time (handshake, admission, first frame)"
storm_sessions="${BENCH_STORM_SESSIONS:-10000}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# An open session holds two descriptors in the server (its socket, and the duplicate kept to end
# a client that stops reading); past the open-files limit the server's accepts fail (EMFILE) and
# the storm would time accept back-offs, not admission.
storm_cap=$(( ($(ulimit -n) - 200) / 2 ))
if [ "$storm_sessions" -gt "$storm_cap" ]; then
    echo "  (open-files limit $(ulimit -n): $storm_cap sessions instead of $storm_sessions)"
    storm_sessions="$storm_cap"
fi
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# storm NAME PID URL [tokens-file]: sessions/s, p99, and the server's RSS per open idle session.
storm() {
    local name="$1" pid="$2" url="$3"; shift 3
    local before; before="$(rss_kib "$pid")"
    "$frames" storm "$url" "$storm_sessions" 200 "$@" > "$work/storm.txt" &
    local storm_pid=$!
    for _ in $(seq 1 1200); do grep -q all_open "$work/storm.txt" 2>/dev/null && break; sleep 0.1; done
    local open; open="$(rss_kib "$pid")"
    wait "$storm_pid"
    local sps p99
    sps="$(sed -n 's/.*sessions_per_second=\([0-9]*\).*/\1/p' "$work/storm.txt")"
    p99="$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' "$work/storm.txt")"
    storm_sps["$name"]="$sps"
    storm_rows+=("| $name | $sps | $p99 ms | $(python3 -c "print(f'{($open-$before)/$storm_sessions:.1f}')") KiB |")
    echo "  $name: $sps sessions/s, p99 $p99 ms, RSS $before → $open KiB"
}
declare -A storm_sps; storm_rows=()
storm "bare actix-ws (greeting + echo)" "$ceiling_pid" "ws://127.0.0.1:$ceiling_port/ws"
"$bin" mint --org dev --ttl 3600 --count "$storm_sessions" > "$work/storm-tokens.txt"
start_server STREAMTOKEN_STREAM_MAX_SESSIONS=100000 STREAMTOKEN_STREAM_MAX_SESSIONS_PER_ORG=100000
storm "GET /v1/stream (memory store)" "$server_pid" "ws://${base#http://}/v1/stream" "$work/storm-tokens.txt"
stop_server

echo "== memory store footprint"
footprint="$(target/release/examples/memory_footprint)"
echo "  $footprint"

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "Machine: $(nproc) cores ($cpu), $(free -g | awk '/Mem:/ {print $2}') GiB; load generator on the same machine."
echo
echo "| in-process (one core) | ops/s | time per op |"
echo "| --- | ---: | ---: |"
printf '%s\n' "${micro_rows[@]}"
echo
echo "| HTTP ($connections connections, $duration, $threads wrk threads) | req/s | p50 | p99 | vs bare ceiling | p99 vs ceiling's | server peak RSS | non-2xx |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
echo
echo "Bare actix-web ceiling (req/s / p99), measured before each run: ${ceiling_runs[*]}."
echo
# Compared through each run's own ceiling, so a machine that slowed between two runs does not
# pass for a slower route.
ratio() { python3 -c "print(f'{${ratio_of[$1]}/${ratio_of[$2]}:.2f}')"; }
echo "Minting with the Redis store (process quota) / with the memory store: $(ratio "POST /v1/tokens (mint, Redis store, process quota)" "POST /v1/tokens (mint)")."
echo "Redemption on the cluster / on one Redis: $(ratio "POST /v1/tokens/redeem (Redis Cluster, 3 masters)" "POST /v1/tokens/redeem (Redis store)"); on one Redis / memory: $(ratio "POST /v1/tokens/redeem (Redis store)" "POST /v1/tokens/redeem (memory store)")."
echo "| connection storm ($storm_sessions sessions, 200 at a time) | sessions/s | p99 open → first frame | server RSS per open idle session |"
echo "| --- | ---: | ---: | ---: |"
printf '%s\n' "${storm_rows[@]}"
echo "Storm ratio: $(python3 -c "print(f'{${storm_sps["GET /v1/stream (memory store)"]}/${storm_sps["bare actix-ws (greeting + echo)"]}:.2f}')") of the bare actix-ws endpoint."
echo
echo "WebSocket echo round trips (64 sessions, 1 KiB binary frames): direct to the upstream $direct_fps/s, through a proxy route $proxied_fps/s ($(python3 -c "print(f'{$proxied_fps/$direct_fps:.2f}')") of direct)."
echo
echo "Memory store with 1,000,000 live consumed jti: $(sed 's/.*rss_mib=\([0-9.]*\).*bytes_per_entry=\([0-9]*\).*/\1 MiB RSS (about \2 bytes per entry)/' <<< "$footprint")"
