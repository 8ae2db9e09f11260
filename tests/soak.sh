#!/usr/bin/env bash
# Flake check: runs the integration suite N times (default 10) with a CPU-bound process beside
# it, as a busy CI machine would, and reports every failure. Exit status 1 if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${N:-10}"
export CI="${CI:-true}"
logs="target/soak"
rm -rf "$logs" && mkdir -p "$logs"

cargo test --quiet --test api --no-run
burner_pid=""
cleanup() { [ -n "$burner_pid" ] && kill "$burner_pid" 2>/dev/null; true; }
trap cleanup EXIT
# One core kept busy for the whole soak: tests share the other with the server under test.
bash -c 'while :; do :; done' &
burner_pid=$!

failed_runs=0
for run in $(seq 1 "$runs"); do
    started=$(date +%s)
    if cargo test --quiet --test api >"$logs/run-$run.log" 2>&1; then
        echo "run $run/$runs: ok ($(( $(date +%s) - started )) s)"
    else
        failed_runs=$((failed_runs + 1))
        echo "run $run/$runs: FAILED ($(( $(date +%s) - started )) s), log in $logs/run-$run.log"
        grep -E '^    [a-z0-9_:]+$' "$logs/run-$run.log" | sed 's/^ */    failed: /' | sort -u
    fi
done

echo
echo "soak: $runs runs of the integration suite beside a CPU-bound process, $failed_runs failed"
grep -hE '^    [a-z0-9_:]+$' "$logs"/run-*.log 2>/dev/null | sort | uniq -c | sort -rn \
    | sed 's/^ *\([0-9]*\) *\(.*\)/    \2: failed in \1 run(s)/' || true
[ "$failed_runs" -eq 0 ]
