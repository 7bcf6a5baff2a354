#!/usr/bin/env bash
# Runs a smoke subset of the suite against the LOWEST versions pyproject.toml allows.
#
# Every runtime requirement in pyproject.toml is a `name>=X` bound; this script installs exactly `name==X` for
# each of them into a fresh .venv-min (torch from the same CPU build the main suite uses), installs vhtool with
# --no-deps, and runs the smoke subset below. Dependencies of those packages (click, tokenizers, httpx, ...)
# resolve to their newest allowed versions, as they would for a user who installs vhtool today.
#
# Not part of CI. Run it after raising or lowering a bound:  bash scripts/test_min_versions.sh [pytest args]
# Needs Python 3.10 or 3.11 (numpy 1.24 ships no wheels for newer Pythons). PYTHON=python3.11 picks one.
#
# Not in the smoke subset:
#   - the 31 TRL interop tests (names matching "trl", test_reference_peak_memory_is_below_a_deep_copy, and the
#     single-file cases of test_init_output_loads_everywhere, which also load the output in TRL): trl==1.12.0
#     (the dev extra) requires accelerate>=1.4 and datasets, which would lift the accelerate floor under test.
#     They run in CI against the latest versions.
#   - tests/test_hub_server.py: it tests the loopback Hub fixture itself with httpx2 (huggingface_hub >= 2 only).
#   - test_fuzz, test_builtin, test_output_safety, test_reliability, test_score_distributed: they exercise
#     vhtool's own code paths more than its dependencies, and are slow on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-min

"$PY" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

# `name>=X` -> `name==X` for every runtime requirement (a requirement without a `>=` bound is an error here).
"$VENV/bin/python" - >"$VENV/min-pins.txt" <<'EOF'
import re
import sys

text = open("pyproject.toml", encoding="utf-8").read()
try:
    import tomllib

    deps = tomllib.loads(text)["project"]["dependencies"]
except ImportError:  # Python 3.10: read the `dependencies = [...]` block by hand
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    deps = re.findall(r'"([^"]+)"', block)
for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", dep)
    if m is None:
        sys.exit(f"test_min_versions.sh: cannot derive a pin from {dep!r} (expected 'name>=version')")
    print(f"{m.group(1)}=={m.group(2)}")
EOF
# transformers 5.0-5.4 depend on typer-slim, which installs the same `typer` package as typer: pin it to the
# typer floor, or the newest typer-slim would overwrite the typer code under test.
typer_pin=$(sed -n 's/^typer==//p' "$VENV/min-pins.txt")
{ cat "$VENV/min-pins.txt"; [ -z "$typer_pin" ] || echo "typer-slim==$typer_pin"; } >"$VENV/min-constraints.txt"
echo "Lowest allowed versions:" && sed 's/^/  /' "$VENV/min-pins.txt"

torch_pin=$(grep '^torch==' "$VENV/min-pins.txt" || true)
[ -z "$torch_pin" ] || "$VENV/bin/python" -m pip install -q "$torch_pin"
"$VENV/bin/python" -m pip install -q -c "$VENV/min-constraints.txt" -r "$VENV/min-pins.txt"
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip install -q pytest hypothesis
"$VENV/bin/python" -m pip check

# Show what was actually installed next to the pins (a mismatch fails the run).
"$VENV/bin/python" - "$VENV/min-pins.txt" <<'EOF'
import sys
from importlib.metadata import version

from packaging.specifiers import SpecifierSet

bad = []
for line in open(sys.argv[1], encoding="utf-8"):
    name, want = line.strip().split("==")
    got = version(name)
    ok = SpecifierSet(f"=={want}").contains(got, prereleases=True)
    print(f"  {name:16} pinned {want:8} installed {got}{'' if ok else '  <-- MISMATCH'}")
    bad += [] if ok else [name]
sys.exit(f"installed versions differ from the pins: {bad}" if bad else 0)
EOF

SMOKE=(
    tests/test_init.py tests/test_models.py tests/test_inspect.py tests/test_verify.py tests/test_score.py
    tests/test_reference.py tests/test_reward.py tests/test_convert.py
    tests/test_hub_errors.py tests/test_init_hub.py tests/test_push.py
)
NEEDS_TRL="trl or reference_peak_memory or loads_everywhere[auto-False or loads_everywhere[copy-False"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_XET=1
"$VENV/bin/python" -m pytest -q "${SMOKE[@]}" -k "not ($NEEDS_TRL)" "$@"
