#!/usr/bin/env bash
# Ends `make test` by saying what was skipped and why, so a local run without redis-server or
# Chromium never looks fully green. Each skipping test appends "<test>\t<reason>" to the ledger.
set -euo pipefail
ledger="${1:-target/tmp/skipped-tests.txt}"
[ -s "$ledger" ] || exit 0
echo
sort -u "$ledger" | awk -F'\t' '
    { count[$2]++; if (!($2 in first)) first[$2] = $1 }
    END {
        for (reason in count)
            printf "%d test%s skipped: %s (e.g. %s); CI=true makes this a failure\n",
                count[reason], count[reason] == 1 ? "" : "s", reason, first[reason]
    }' | sort -rn
