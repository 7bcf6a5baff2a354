#!/usr/bin/env bash
# Installs vhtool with its dev extra into .venv at the exact versions of constraints.txt (torch pinned to the
# CPU build) and runs the test suite. Reproducible: a new release of a dependency changes nothing here until
# constraints.txt is refreshed (scripts/test_latest.sh runs the suite on the newest releases instead).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
export HF_HUB_OFFLINE=1
.venv/bin/python -m pytest -q "$@"
