#!/usr/bin/env bash
# Installs vhtool with its dev extra into .venv (torch pinned to the CPU build) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_XET=1
.venv/bin/python -m pytest -q "$@"
