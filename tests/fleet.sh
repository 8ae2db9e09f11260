#!/usr/bin/env bash
# `make fleet`: a local Redis Cluster and two streamtoken instances sharing it and one keys folder,
# to try what production runs (several instances, one cluster). Everything listens on 127.0.0.1,
# keeps its data and logs under target/fleet/ and stops on Ctrl-C. The cluster starts empty on
# every run. Settings:
#   FLEET_REDIS_PORTS  cluster node ports (default "7101 7102 7103"; each needs port+10000 too)
#   FLEET_REPLICAS     replicas per master (default 0; needs 3 * (1 + N) ports or more)
#   FLEET_HTTP_PORTS   streamtoken ports (default "8081 8082")
#   STREAMTOKEN_KEYS_DIR  the shared keys folder (default keys/)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=target/fleet
read -r -a redis_ports <<<"${FLEET_REDIS_PORTS:-7101 7102 7103}"
read -r -a http_ports <<<"${FLEET_HTTP_PORTS:-8081 8082}"
replicas="${FLEET_REPLICAS:-0}"
bin=target/debug/streamtoken

fail() {
    echo "fleet: $*" >&2
    exit 1
}

for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail "$tool not found; install it with apt-get install -y redis-server redis-tools"
done
[[ $replicas =~ ^[0-9]+$ ]] || fail "FLEET_REPLICAS must be a number, not '$replicas'"
(( ${#redis_ports[@]} >= 3 * (1 + replicas) )) ||
    fail "FLEET_REDIS_PORTS has ${#redis_ports[@]} ports; 3 masters with $replicas replicas each need $((3 * (1 + replicas)))"
(( ${#http_ports[@]} >= 1 )) || fail "FLEET_HTTP_PORTS is empty"
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "${redis_ports[@]}" "${http_ports[@]}"; do
    [[ $port =~ ^[0-9]+$ ]] && (( port > 0 && port <= 65535 )) || fail "'$port' is not a port"
    ! in_use "$port" ||
        fail "127.0.0.1:$port is in use (another make fleet?); pick others with FLEET_REDIS_PORTS / FLEET_HTTP_PORTS"
done
for port in "${redis_ports[@]}"; do
    bus=$((port + 10000)) # the cluster bus; Redis before 7.0 cannot move it
    (( bus <= 65535 )) || fail "redis port $port is too high: its cluster bus port $bus does not exist"
    ! in_use "$bus" || fail "127.0.0.1:$bus (cluster bus of redis port $port) is in use"
done

# Built before anything starts, so a failed build leaves nothing to clean up.
cargo build --quiet

redis_pids=()
serve_pids=()
# Whether PID runs (not merely a zombie waiting to be reaped, which kill -0 would count).
alive() {
    local state
    read -r _ _ state _ 2>/dev/null <"/proc/$1/stat" && [ "$state" != Z ]
}
stop() { # stop SECONDS PID...: SIGTERM, then SIGKILL whatever still runs after SECONDS
    local deadline=$((SECONDS + $1)) pid running
    shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    while [ "$SECONDS" -lt "$deadline" ]; do
        running=0
        for pid in "$@"; do alive "$pid" && running=1; done
        [ "$running" = 1 ] || break
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
    wait "$@" 2>/dev/null || true
}
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "fleet: stopping"
    # The instances first (they drain in-flight requests for up to 10 s), then the cluster.
    stop 12 "${serve_pids[@]}"
    stop 5 "${redis_pids[@]}"
    echo "fleet: stopped; logs are in $dir/"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$dir"
mkdir -p "$dir"

nodes=()
seeds=()
for port in "${redis_ports[@]}"; do
    mkdir -p "$dir/redis-$port"
    # Data only in memory; nodes.conf (cluster membership) in its own dir.
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/redis-$port" --daemonize no \
        --save '' --appendonly no \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --cluster-require-full-coverage no --cluster-replica-validity-factor 0 \
        --repl-diskless-sync-delay 0 \
        >"$dir/redis-$port.log" 2>&1 </dev/null &
    redis_pids+=($!)
    nodes+=("127.0.0.1:$port")
    seeds+=("redis://127.0.0.1:$port")
done
for i in "${!redis_ports[@]}"; do
    port=${redis_ports[$i]}
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && continue 2
        alive "${redis_pids[$i]}" || break
        sleep 0.1
    done
    tail -n 20 "$dir/redis-$port.log" >&2
    fail "redis-server on 127.0.0.1:$port did not start; log above and in $dir/redis-$port.log"
done

redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes \
    >"$dir/cluster-create.log" 2>&1 </dev/null || {
    cat "$dir/cluster-create.log" >&2
    fail "redis-cli --cluster create failed (output above)"
}
for port in "${redis_ports[@]}"; do
    for _ in $(seq 200); do
        redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && continue 2
        sleep 0.1
    done
    fail "redis node 127.0.0.1:$port never reported cluster_state:ok; see $dir/redis-$port.log"
done
seed_list=$(IFS=,; echo "${seeds[*]}")

# keys init prints the dev API key only when it creates it (the first run on this folder).
keys_dir="${STREAMTOKEN_KEYS_DIR:-keys}"
init_out=$("$bin" keys init) || fail "streamtoken keys init failed"
echo "$init_out"
api_key=$(grep -oE 'st_[A-Za-z0-9_-]{43}' <<<"$init_out" | head -n1 || true)

urls=()
for port in "${http_ports[@]}"; do
    # STREAMTOKEN_REDIS_URL would contradict the cluster setting, so it is dropped.
    env -u STREAMTOKEN_REDIS_URL STREAMTOKEN_BIND="127.0.0.1:$port" \
        STREAMTOKEN_REDIS_CLUSTER_URLS="$seed_list" STREAMTOKEN_DEMO="${STREAMTOKEN_DEMO:-on}" \
        "$bin" serve >"$dir/streamtoken-$port.log" 2>&1 </dev/null &
    serve_pids+=($!)
    urls+=("http://127.0.0.1:$port")
done
for i in "${!http_ports[@]}"; do
    port=${http_ports[$i]}
    for _ in $(seq 150); do
        grep -qF "listening on http://127.0.0.1:$port" "$dir/streamtoken-$port.log" && continue 2
        alive "${serve_pids[$i]}" || break
        sleep 0.1
    done
    tail -n 20 "$dir/streamtoken-$port.log" >&2
    fail "streamtoken on 127.0.0.1:$port did not start; log above and in $dir/streamtoken-$port.log"
done

cat <<EOF

fleet is up (Ctrl-C stops it all):
  redis cluster  ${nodes[*]}  ($(( ${#redis_ports[@]} / (1 + replicas) )) masters, $replicas replicas each)
  streamtoken    ${urls[*]}
                 STREAMTOKEN_REDIS_CLUSTER_URLS=$seed_list
  keys           $keys_dir/ (shared)
  logs           $dir/*.log
EOF
if [ -n "$api_key" ]; then
    echo "  dev API key    $api_key"
else
    echo "  dev API key    not shown: $keys_dir/ already had API keys (only hashes are kept); use the"
    echo "                 one the first keys init printed, or: $bin keys add-api-key --org dev --scope mint --scope redeem"
fi
for port in "${http_ports[@]}"; do
    # A build without cluster support ignores STREAMTOKEN_REDIS_CLUSTER_URLS and says so here.
    if grep -qF 'shared store: memory' "$dir/streamtoken-$port.log"; then
        echo "  WARNING        127.0.0.1:$port keeps tokens in memory, not in the cluster: a token"
        echo "                 redeemed there can be redeemed again on another instance"
    fi
done
first=${urls[0]}
last=${urls[${#urls[@]}-1]}
cat <<EOF

Mint on one instance, redeem on another (the second redeem anywhere must be a 409):
  KEY=${api_key:-st_...}
  TOKEN=\$(curl -s -X POST $first/v1/tokens -H "Authorization: Bearer \$KEY" | sed 's/.*"token":"\([^"]*\)".*/\1/')
  curl -s -X POST $last/v1/tokens/redeem -H "Authorization: Bearer \$KEY" -H 'content-type: application/json' -d "{\"token\":\"\$TOKEN\"}"

EOF

# Until Ctrl-C, or until one of them dies (then the rest is stopped too).
wait -n || true
for i in "${!redis_ports[@]}"; do
    alive "${redis_pids[$i]}" || echo "fleet: redis-server on ${redis_ports[$i]} exited; see $dir/redis-${redis_ports[$i]}.log" >&2
done
for i in "${!http_ports[@]}"; do
    alive "${serve_pids[$i]}" || echo "fleet: streamtoken on ${http_ports[$i]} exited; see $dir/streamtoken-${http_ports[$i]}.log" >&2
done
exit 1
