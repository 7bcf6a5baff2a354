#!/usr/bin/env python
"""Peak RSS of loading a policy + reference pair: vhtool (shared tensors held once) vs TRL-style.

Usage: .venv/bin/python scripts/bench_reference.py [--shared 6 16]

TRL-style is `from_pretrained` + `create_reference_model(num_shared_layers=N)`, which deep-copies
the whole model first. vhtool is `vhtool.load_policy_and_reference(policy, reference)` on a
reference made by `vhtool make-reference --shared-layers N`. Both load in bf16 on the CPU. The goal
(issue 4): vhtool's peak <= policy size + unshared size + 15%.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import make_llama, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench-work"
VHTOOL = [sys.executable, "-m", "vhtool"]

VHTOOL_CODE = """
import sys, torch, warnings
warnings.simplefilter("ignore")
import vhtool
policy, ref = vhtool.load_policy_and_reference(sys.argv[1], sys.argv[2], dtype=torch.bfloat16)
print(len(ref.shared_parameter_names))
"""

# TRL 1.12.0 cannot load a local sharded value-head checkpoint (#1917), so the TRL-style baseline loads the base
# with transformers and wraps it, as a TRL user would; create_reference_model is TRL's own.
TRL_CODE = """
import sys, torch, warnings
warnings.simplefilter("ignore")
from transformers import AutoModelForCausalLM
from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as C
from trl.experimental.ppo.ppo_trainer import create_reference_model
policy = C(AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16))
ref = create_reference_model(policy, num_shared_layers=int(sys.argv[2]))
"""

BASELINE_CODE = """
import sys, torch, warnings
warnings.simplefilter("ignore")
import vhtool
policy = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=int, nargs="+", default=[6, 16])
    args = ap.parse_args()
    src = make_llama(WORK / "llama-1b", "1b")
    work = WORK / "reference"
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "policy"
    if not (policy / "vhtool.json").exists():
        shutil.rmtree(policy, ignore_errors=True)
        run_measured([*VHTOOL, "init", str(src), "-o", str(policy), "--quiet", "--link", "hardlink"])
    index = json.loads((src / "model.safetensors.index.json").read_text())
    total_bytes = index["metadata"]["total_size"]
    results: dict[str, object] = {"policy_bytes": total_bytes}
    base = run_measured([sys.executable, "-c", BASELINE_CODE, str(policy)])
    # transformers maps safetensors lazily: the policy's pages count only once touched, hence a small RSS here
    results["policy alone (vhtool from_pretrained)"] = {"wall_s": base.wall, "rss_mib": base.max_rss_mib}
    for n in args.shared:
        ref = work / f"ref{n}"
        if not (ref / "vhtool.json").exists():
            run_measured([*VHTOOL, "make-reference", str(policy), "--shared-layers", str(n), "-o", str(ref), "-q"])
        manifest = json.loads((ref / "vhtool.json").read_text())
        shared = set(manifest["reference"]["shared_tensors"])
        from vhtool.checkpoint.layout import open_checkpoint

        ckpt = open_checkpoint(ref)
        unshared = sum(loc.info.nbytes for name, loc in ckpt.tensors.items() if name not in shared)
        ours = run_measured([sys.executable, "-c", VHTOOL_CODE, str(policy), str(ref)])
        theirs = run_measured([sys.executable, "-c", TRL_CODE, str(policy), str(n)])
        goal_mib = (total_bytes + unshared) * 1.15 / 2**20
        results[f"shared_layers={n}"] = {
            "unshared_bytes": unshared,
            "vhtool": {"wall_s": ours.wall, "rss_mib": ours.max_rss_mib},
            "trl_style": {"wall_s": theirs.wall, "rss_mib": theirs.max_rss_mib},
            "goal_rss_mib ((policy bytes + unshared bytes) * 1.15)": goal_mib,
            "goal_met": ours.max_rss_mib <= goal_mib,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
