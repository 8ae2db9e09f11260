#!/usr/bin/env bash
# The official AssemblyAI Python SDK (pinned in tests/sdk/requirements.txt), unchanged, against
# streamtoken over its own TLS: create_temporary_token → StreamingClient(token=) through the proxy
# route /v3/ws to a fake upstream speaking Begin / Turn / Termination, and the same token refused
# a second time (tests/sdk/sdk_flow.py says what is checked).
#
# Started here, all on 127.0.0.1 and all stopped on exit: a test CA and a certificate for
# 127.0.0.1 (trustme), the fake upstream (tests/sdk/fake_upstream.py), streamtoken with
# STREAMTOKEN_TLS_CERT/KEY and STREAMTOKEN_PROXY=/v3/ws=ws://127.0.0.1:<upstream>/v3/ws. The SDK
# trusts the test CA through SSL_CERT_FILE, as a user's would trust theirs.
# Runs when the SDK is installed (tests/sdk/install.sh); with CI=true it must be.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${SDK_VENV:-target/sdk-venv}"
missing=""
if ! [ -x "$venv/bin/python" ]; then
    missing="not installed"
elif ! cmp -s tests/sdk/requirements.txt "$venv/installed-requirements.txt"; then
    missing="installed from other pins than tests/sdk/requirements.txt"
fi
if [ -n "$missing" ]; then
    case "${CI:-}" in
        true|1) echo "SDK test: the AssemblyAI SDK in $venv is $missing (run tests/sdk/install.sh)" >&2; exit 1 ;;
        *) echo "skipping the AssemblyAI SDK test: the SDK is $missing; run tests/sdk/install.sh"
           mkdir -p target/tmp
           printf 'AssemblyAI SDK test\tpinned AssemblyAI SDK not installed (tests/sdk/install.sh)\n' >> target/tmp/skipped-tests.txt
           exit 0 ;;
    esac
fi
py="$venv/bin/python"

work="$(mktemp -d)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (at most 10 s) for a line matching $2 in file $1; fails naming $3 and showing its log $4.
wait_for() {
    local _
    for _ in $(seq 1 200); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "SDK test: $3 did not start within 10 s:" >&2
    cat "$4" >&2 || true
    exit 1
}

started=$SECONDS
cargo build --quiet --bin streamtoken
bin=target/debug/streamtoken
build_seconds=$((SECONDS - started))

# A throwaway CA, and a certificate for 127.0.0.1 signed by it (with its chain).
"$py" - "$work" <<'EOF'
import sys
import trustme

work = sys.argv[1]
ca = trustme.CA(organization_name="streamtoken SDK test")
leaf = ca.issue_cert("127.0.0.1")
ca.cert_pem.write_to_path(f"{work}/ca.pem")
leaf.private_key_pem.write_to_path(f"{work}/server.key")
for i, blob in enumerate(leaf.cert_chain_pems):
    blob.write_to_path(f"{work}/server.pem", append=i > 0)
EOF

# The fake upstream, on a free port it writes down.
"$py" tests/sdk/fake_upstream.py --port-file "$work/upstream.port" \
    --record "$work/upstream.jsonl" --lifetime 300 > "$work/upstream.log" 2>&1 &
pids+=($!)
wait_for "$work/upstream.port" . "the fake upstream" "$work/upstream.log"
upstream_port="$(cat "$work/upstream.port")"
: > "$work/upstream.jsonl"

# streamtoken over TLS, the upstream behind /v3/ws.
export STREAMTOKEN_KEYS_DIR="$work/keys" STREAMTOKEN_BIND=127.0.0.1:0
key="$("$bin" keys init | tail -n 1)"
STREAMTOKEN_TLS_CERT="$work/server.pem" STREAMTOKEN_TLS_KEY="$work/server.key" \
STREAMTOKEN_PROXY="/v3/ws=ws://127.0.0.1:$upstream_port/v3/ws" \
    "$bin" serve > "$work/stdout" 2> "$work/server.log" &
pids+=($!)
wait_for "$work/stdout" "listening on" "streamtoken" "$work/server.log"
url="$(sed -n 's/^streamtoken listening on //p' "$work/stdout")"
case "$url" in
    https://*) ;;
    *) echo "SDK test: streamtoken serves $url, not https:// (STREAMTOKEN_TLS_CERT/KEY are set); the SDK only speaks https:// and wss:// to a host" >&2
       exit 1 ;;
esac
host="${url#https://}"
host="${host%/}"

echo "== AssemblyAI SDK against $url (upstream 127.0.0.1:$upstream_port)"
status=0
# No proxy from the environment may stand between the SDK and 127.0.0.1 (httpx and websockets
# both read these); SSL_CERT_FILE is the only CA the SDK gets.
env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy -u ALL_PROXY -u all_proxy \
    -u SSL_CERT_DIR NO_PROXY='*' \
    SSL_CERT_FILE="$work/ca.pem" STREAMTOKEN_HOST="$host" STREAMTOKEN_KEY="$key" \
    UPSTREAM_RECORD="$work/upstream.jsonl" \
    timeout 120 "$py" tests/sdk/sdk_flow.py || status=$?
if [ "$status" -ne 0 ]; then
    echo "SDK test failed ($status); streamtoken's log:" >&2
    tail -n 40 "$work/server.log" >&2 || true
    echo "the fake upstream's log:" >&2
    tail -n 40 "$work/upstream.log" >&2 || true
    exit "$status"
fi
if grep -q "panicked" "$work/server.log"; then
    echo "the server panicked:" >&2; grep -A5 panicked "$work/server.log" >&2; exit 1
fi
echo "AssemblyAI SDK: OK ($((SECONDS - started)) s, of which build ${build_seconds} s)"
