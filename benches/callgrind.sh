#!/usr/bin/env bash
# Instructions per request, route by route, under callgrind: steady where wall-clock req/s is
# not (a shared machine). For each route the release server (one worker) runs twice under
# callgrind, serving N1 and then N2 requests one after another on one keep-alive connection;
# (I(N2) - I(N1)) / (N2 - N1) is the cost of one request, start-up and shutdown cancelled out.
# The N2 run's profile is kept in $CALLGRIND_OUT (default target/callgrind) for
# `callgrind_annotate`. Only user-space instructions of the server count (not the kernel's).
# ROUTES="ceiling mint" limits the routes; the Redis route needs redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

n1="${CALLGRIND_N1:-500}"
n2="${CALLGRIND_N2:-2500}"
out="${CALLGRIND_OUT:-target/callgrind}"
routes="${ROUTES:-ceiling healthz mint v3 redeem redeem_redis}"
mkdir -p "$out"

cargo build --release --quiet --bin streamtoken --example ceiling
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release/streamtoken"
work="$(mktemp -d)"
server_pid=""; redis_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

export STREAMTOKEN_KEYS_DIR="$work/keys" STREAMTOKEN_KEYS_POLL_MS=0
key="$("$bin" keys init | tail -n 1)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# measure NAME N [env…] -- CLIENT ARGS…: instructions of one server run serving N requests.
measure() {
    local name="$1" n="$2"; shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local port; port="$(free_port)"
    local file="$work/$name.$n.out"
    if [ "$name" = ceiling ]; then
        valgrind --tool=callgrind --callgrind-out-file="$file" \
            "$target/release/examples/ceiling" "127.0.0.1:$port" 1 > "$work/server.out" 2> "$work/server.err" &
    else
        env STREAMTOKEN_BIND="127.0.0.1:$port" STREAMTOKEN_RATE_PER_MINUTE=100000000 \
            STREAMTOKEN_WORKERS=1 RUST_LOG=warn "${envs[@]}" \
            valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" serve \
            > "$work/server.out" 2> "$work/server.err" &
    fi
    server_pid=$!
    for _ in $(seq 1 600); do grep -q "listening on" "$work/server.out" 2>/dev/null && break; sleep 0.1; done
    python3 benches/callgrind_client.py "127.0.0.1:$port" "$n" "$@"
    kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
    [ "$n" = "$n2" ] && cp "$file" "$out/$name.out"
    # quanta calibrates its clock at start-up (the rate limiter's) for as long as that takes
    # under callgrind: a count that varies run to run, so it is taken off.
    local total calibration
    total="$(awk '/^(summary|totals):/ {print $2; exit}' "$file")"
    calibration="$(callgrind_annotate --inclusive=yes "$file" 2>/dev/null \
        | awk '/quanta::Clock as core::default::Default>::default/ {gsub(",", "", $1); print $1; exit}')"
    echo $((total - ${calibration:-0}))
}

# route NAME [env…] -- CLIENT ARGS (a {tokens} argument is replaced by a fresh token file).
route() {
    local name="$1"; shift
    local args=("$@") i1 i2
    local run1=() run2=()
    for a in "${args[@]}"; do
        run1+=("${a//\{tokens\}/$work/tokens1.txt}"); run2+=("${a//\{tokens\}/$work/tokens2.txt}")
    done
    if printf '%s\n' "${args[@]}" | grep -q '{tokens}'; then
        "$bin" mint --org dev --ttl 3600 --count "$n1" > "$work/tokens1.txt"
        "$bin" mint --org dev --ttl 3600 --count "$n2" > "$work/tokens2.txt"
    fi
    i1="$(measure "$name" "$n1" "${run1[@]}")"
    i2="$(measure "$name" "$n2" "${run2[@]}")"
    printf '%-14s %10.0f instructions per request\n' "$name" "$(python3 -c "print(($i2-$i1)/($n2-$n1))")"
}

for r in $routes; do
    case "$r" in
        ceiling) route ceiling -- GET / ;;
        healthz) route healthz -- GET /healthz ;;
        mint) route mint -- POST /v1/tokens --key "$key" --body '{}' ;;
        v3) route v3 -- GET "/v3/token?expires_in_seconds=60" --raw-key "$key" ;;
        redeem) route redeem -- POST /v1/tokens/redeem --key "$key" --tokens '{tokens}' ;;
        redeem_redis)
            redis_port="$(free_port)"
            redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
                --daemonize no > "$work/redis.log" 2>&1 &
            redis_pid=$!
            for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
            route redeem_redis STREAMTOKEN_REDIS_URL="redis://127.0.0.1:$redis_port/" -- \
                POST /v1/tokens/redeem --key "$key" --tokens '{tokens}'
            kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=""
            ;;
    esac
done
