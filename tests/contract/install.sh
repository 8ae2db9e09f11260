#!/usr/bin/env bash
# Installs the pinned contract-test tools into a virtualenv (target/contract-venv by default).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${CONTRACT_VENV:-target/contract-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/contract/requirements.txt
echo "contract tools installed in $venv"
