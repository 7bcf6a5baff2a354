#!/usr/bin/env bash
# The suite against the NEWEST releases pyproject.toml allows (not CI: CI runs scripts/test.sh on the pins of
# constraints.txt). Run it to learn whether a new release breaks vhtool before users do, then refresh the pins:
#   bash scripts/test_latest.sh && cp .venv-latest/freeze.txt constraints.txt   (keep the header comment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-latest
"$PY" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0   # the CPU build; an open range would pull a CUDA build
"$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
"$VENV/bin/python" -m pip freeze --exclude-editable | sed 's/+cpu$//' >"$VENV/freeze.txt"
echo "Newest allowed versions:" && grep -iE '^(torch|transformers|huggingface.hub|peft|safetensors|accelerate|typer|trl)==' "$VENV/freeze.txt" | sed 's/^/  /'
export HF_HUB_OFFLINE=1
"$VENV/bin/python" -m pytest -q "$@"
