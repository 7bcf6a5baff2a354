#!/usr/bin/env python
"""Runs a long, random campaign of the model-based test of the file world and prints its figures for
docs/reliability.md: workspaces, steps by command, interrupts by signal, invariant checks, files lost.

    python scripts/model_based_campaign.py --examples 40 --steps 25

Each example is a fresh workspace (a user's .git, script, data and folder beside the output slots) and a fresh
loopback Hub repo holding other tools' files; every step is followed by the invariants of
tests/test_model_based.py (nothing vhtool did not write changes, locally or on the Hub; every output verifies
or is absent; nothing left behind). A failed invariant fails the run: "files lost" is 0 only when it passes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=40, help="workspaces (hypothesis examples)")
    parser.add_argument("--steps", type=int, default=25, help="at most this many steps per workspace")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = {
            **os.environ,
            "VHTOOL_MBT_EXAMPLES": str(args.examples),
            "VHTOOL_MBT_STEPS": str(args.steps),
            "VHTOOL_MBT_RANDOM": "1",
            "VHTOOL_MBT_REPORT": str(report),
            "HF_HUB_OFFLINE": "1",
        }
        start = time.monotonic()
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "tests/test_model_based.py"], cwd=REPO, env=env, check=False
        )
        elapsed = time.monotonic() - start
        stats = json.loads(report.read_text()) if report.is_file() else {}
    steps = {k[len("step:") :]: v for k, v in stats.items() if k.startswith("step:")}
    interrupts = {k[len("interrupt:") :]: v for k, v in stats.items() if k.startswith("interrupt:")}
    print(
        f"\nworkspaces: {stats.get('workspaces', 0)}, steps: {sum(steps.values()) + sum(interrupts.values())}, "
        f"invariant checks: {stats.get('invariant checks', 0)}, {elapsed:.0f} s"
    )
    for name, n in sorted(steps.items()):
        print(f"  {name}: {n}")
    for name, n in sorted(interrupts.items()):
        print(f"  interrupted init, {name}: {n}")
    print(f"files lost: {'0' if res.returncode == 0 else 'SEE THE FAILURE ABOVE'}")
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
