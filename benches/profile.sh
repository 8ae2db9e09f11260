#!/usr/bin/env bash
# A perf profile of the release server (2 workers) under wrk for one route: the shares
# benches/README.md quotes. cpu-clock sampling (no hardware counters on shared machines).
# benches/profile.sh mint|v3|redeem [seconds]; the report goes to $PROFILE_OUT/<route>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
route="${1:-mint}"; seconds="${2:-5}"
out="${PROFILE_OUT:-target/profile}"; mkdir -p "$out"
cargo build --release --quiet --bin streamtoken
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release/streamtoken"
work="$(mktemp -d)"; server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export STREAMTOKEN_KEYS_DIR="$work/keys" STREAMTOKEN_KEYS_POLL_MS=0
key="$("$bin" keys init | tail -n 1)"
export STREAMTOKEN_BENCH_KEY="$key" STREAMTOKEN_BENCH_THREADS=2
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
if [ "$route" = redeem ]; then
    "$bin" mint --org dev --ttl 3600 --count 400000 > "$work/tokens.txt"
    export STREAMTOKEN_BENCH_TOKENS="$work/tokens.txt"
fi
env STREAMTOKEN_BIND="127.0.0.1:$port" STREAMTOKEN_RATE_PER_MINUTE=100000000 STREAMTOKEN_WORKERS=2 \
    RUST_LOG=warn "$bin" serve > "$work/server.out" 2>&1 &
server_pid=$!
for _ in $(seq 1 200); do grep -q "listening on" "$work/server.out" 2>/dev/null && break; sleep 0.05; done
base="http://127.0.0.1:$port"
case "$route" in
    mint) args=(-s benches/wrk/mint.lua "$base/v1/tokens") ;;
    v3) args=(-H "Authorization: $key" "$base/v3/token?expires_in_seconds=60") ;;
    redeem) args=(-s benches/wrk/redeem.lua "$base/v1/tokens/redeem") ;;
esac
perf record -q -e cpu-clock -g -p "$server_pid" -o "$out/$route.perf.data" -- sleep "$seconds" &
perf_pid=$!
wrk -t2 -c64 -d"${seconds}s" "${args[@]}" | grep -E "Requests/sec|Non-2xx" || true
wait "$perf_pid" || true
# Self time by symbol ([k] kernel, [.] user space), then the split kernel / user space.
perf report -i "$out/$route.perf.data" --no-children --sort symbol --stdio -g none --percent-limit 0.4 \
    2>/dev/null | grep -E '^ +[0-9]' | sed -E 's/ +-? +-? *$//; s/  +/ /g' > "$out/$route.txt"
perf report -i "$out/$route.perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
    | awk '$2=="[k]" {k+=$1} $2=="[.]" {u+=$1} END {printf "kernel %.1f%%, user space %.1f%%\n", k, u}' \
    >> "$out/$route.txt"
cat "$out/$route.txt"
