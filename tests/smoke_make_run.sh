#!/usr/bin/env bash
# Smoke test for the README's first command: `make run` on a fresh keys dir must start a
# working service whose dev API key can mint a token and redeem it exactly once.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
keys="$tmp/keys"
log="$tmp/make_run.log"
pgid=""

cleanup() {
    if [ -n "$pgid" ]; then
        # make, cargo and the server share one process group (setsid below).
        kill -TERM -- "-$pgid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "smoke: FAIL: $*" >&2
    echo "---- make run output ----" >&2
    cat "$log" >&2 || true
    exit 1
}

# setsid makes make the leader of a new process group, so cleanup can kill all of it.
# The outer make's MAKEFLAGS (-s, jobserver fds) must not leak in: the echoed recipe
# line below is used to tell `keys init` output from `serve` output.
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
    STREAMTOKEN_KEYS_DIR="$keys" STREAMTOKEN_BIND=127.0.0.1:0 \
    setsid make run >"$log" 2>&1 </dev/null &
pgid=$!

# cargo may still be compiling, hence the generous timeout.
port=""
for _ in $(seq 600); do
    port=$(sed -nE 's#.*listening on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$log" | head -n1)
    [ -n "$port" ] && break
    kill -0 "$pgid" 2>/dev/null || fail "make run exited before listening"
    sleep 0.2
done
[ -n "$port" ] || fail "no 'listening on http://127.0.0.1:PORT' line within 120 s"
base="http://127.0.0.1:$port"

serve_marker='STREAMTOKEN_DEMO=${STREAMTOKEN_DEMO:-on} cargo run --quiet -- serve'
grep -qxF "$serve_marker" "$log" || fail "recipe line '$serve_marker' not echoed"
init_out=$(awk -v marker="$serve_marker" '{ print } $0 == marker { exit }' "$log")

mapfile -t found < <(grep -oE 'st_[A-Za-z0-9_-]{43}' <<<"$init_out" | sort -u)
[ "${#found[@]}" -eq 1 ] || fail "expected exactly one API key in 'keys init' output, found ${#found[@]}"
key=${found[0]}

# post PATH JSON: sets $status and $body.
post() {
    status=$(curl -sS --max-time 10 -o "$tmp/body" -w '%{http_code}' -X POST "$base$1" \
        -H "Authorization: Bearer $key" -H 'content-type: application/json' --data "$2") ||
        fail "curl POST $1 failed"
    body=$(cat "$tmp/body")
}

post /v1/tokens '{"token_type":"realtime","expires_in_seconds":60}'
[ "$status" = 200 ] || fail "POST /v1/tokens: HTTP $status: $body"
token=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["token"])' "$body") ||
    fail "no token in response: $body"
[[ $token == eyJ* ]] || fail "token does not look like a JWT: $token"

redeem_body=$(python3 -c 'import json,sys; print(json.dumps({"token": sys.argv[1]}))' "$token")
post /v1/tokens/redeem "$redeem_body"
[ "$status" = 200 ] || fail "first redeem: HTTP $status: $body"
post /v1/tokens/redeem "$redeem_body"
[ "$status" = 409 ] || fail "second redeem: expected 409, got HTTP $status: $body"

# `make run` serves the browser demo (on loopback), and says so at start-up.
grep -qF 'demo on (STREAMTOKEN_DEMO=on)' "$log" || fail "no start-up line saying the demo is on"
demo_status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/demo")
[ "$demo_status" = 200 ] || fail "GET /demo after make run: HTTP $demo_status"

[ -f "$keys/api_keys.json" ] || fail "$keys/api_keys.json was not created"
if grep -qF "$key" "$keys/api_keys.json"; then fail "api_keys.json contains the plaintext API key"; fi
sleep 0.2 # let request logging land before reading what `serve` printed
server_out=$(awk -v marker="$serve_marker" 'seen { print } $0 == marker { seen = 1 }' "$log")
if grep -qF "$key" <<<"$server_out"; then fail "server output contains the API key"; fi
if grep -qF "$token" <<<"$server_out"; then fail "server output contains the token"; fi

echo "smoke: make run OK"
