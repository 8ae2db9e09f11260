#!/usr/bin/env bash
# Mutation testing of the code that guards single use, verification, tenancy and admission.
# Every mutant that survives must be killed by a new test or explained in tests/MUTANTS.md.
# Not part of `make test`: it rebuilds once per mutant (about an hour on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null 2>&1 || cargo install --locked cargo-mutants
export CI="${CI:-true}"
# The fault-injection tests (kill -9, CLIENT PAUSE) take most of the suite's time and guard
# timing, not logic; every mutant below is also exercised by the rest of the suite.
exec cargo mutants --no-shuffle --timeout 180 \
    -f 'src/store/*.rs' -f 'src/token/verify.rs' -f 'src/token/claims.rs' \
    -f 'src/admission/*.rs' -f 'src/gateway.rs' -f 'src/tenancy/*.rs' \
    "$@" -- --lib --test api -- --skip faults
