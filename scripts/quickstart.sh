#!/usr/bin/env bash
# From a fresh clone: install vhtool (CPU torch) and build a policy + reference from a built-in model, offline.
# Installs only what running vhtool needs (the test and lint tools come with scripts/test.sh), at the versions
# the test suite runs against (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e .
export HF_HUB_OFFLINE=1
work=${1:-quickstart-out}
mkdir -p "$work"
.venv/bin/vhtool init builtin:tiny-gpt2 --v-head-init normal -o "$work/policy" --force
.venv/bin/vhtool make-reference "$work/policy" --shared-layers 1 -o "$work/reference" --force
.venv/bin/python - "$work" <<'PY'
import json, sys
import torch
import vhtool

work = sys.argv[1]
policy, reference = vhtool.load_policy_and_reference(f"{work}/policy", f"{work}/reference")
print("value head loaded:", policy.v_head_loaded, "from", policy.v_head_source)
print("tensors shared with the reference:", len(reference.shared_parameter_names))
ids = torch.tensor([[1, 2, 3, 4]])
logits, _, value = policy.eval()(input_ids=ids)
print("logits", tuple(logits.shape), "values", [round(v, 4) for v in value[0].tolist()])
print(json.dumps(json.load(open(f"{work}/policy/vhtool.json"))["value_head"], indent=2))
PY
cat <<EOF

Done: $work/policy (a policy with a value head) and $work/reference (a frozen reference sharing its first block).
Next:
  source .venv/bin/activate
  vhtool inspect-layers $work/policy       # what it holds, from headers only
  vhtool score $work/policy --text "Hello there" --head value
  vhtool --help                            # every command; README.md has the recipes
EOF
