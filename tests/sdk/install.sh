#!/usr/bin/env bash
# Installs the pinned AssemblyAI SDK (and the test's helpers) into a virtualenv (target/sdk-venv by
# default) for tests/sdk/run.sh, and keeps a copy of the requirements it installed, so a venv left
# from older pins is noticed (run.sh, .ci/run).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${SDK_VENV:-target/sdk-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
cp tests/sdk/requirements.txt "$venv/installed-requirements.txt"
echo "AssemblyAI SDK test tools installed in $venv"
