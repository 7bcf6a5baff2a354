#!/usr/bin/env python
"""Benchmark `vhtool init` and `vhtool make-reference` against `cp -r`, a hashlib pass and TRL-style load-and-save.

Usage: .venv/bin/python scripts/bench_init.py [--runs 5] [--skip-trl] [--skip-70b]

Everything is measured in one run on this machine (medians of warm runs, whole process, peak RSS of
the child from wait4). Work dirs live under bench-work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import dir_size, make_llama, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench-work"
VHTOOL = [sys.executable, "-m", "vhtool"]


def weight_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".safetensors")


def hashlib_pass(d: Path) -> float:
    t0 = time.perf_counter()
    buf = bytearray(8 * 1024 * 1024)
    view = memoryview(buf)
    for p in weight_files(d):
        h = hashlib.sha256()
        with open(p, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                h.update(view[:n])
    return time.perf_counter() - t0


def median_of(cmd: list[str], out: Path, runs: int) -> tuple[float, float]:
    walls, rss = [], []
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        r = run_measured(cmd)
        walls.append(r.wall)
        rss.append(r.max_rss_mib)
    shutil.rmtree(out, ignore_errors=True)
    return statistics.median(walls), max(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-70b", action="store_true")
    args = ap.parse_args()
    src = make_llama(WORK / "llama-1b", "1b")
    out_dir = WORK / "init"
    out_dir.mkdir(parents=True, exist_ok=True)
    size = sum(p.stat().st_size for p in weight_files(src))
    results: dict[str, dict[str, float]] = {}

    # warm the page cache once
    hashlib_pass(src)
    cp_out = out_dir / "cp"
    results["cp -r"] = dict(
        zip(("wall_s", "rss_mib"), median_of(["cp", "-r", str(src), str(cp_out)], cp_out, args.runs))
    )
    results["hashlib.sha256"] = {"wall_s": statistics.median(hashlib_pass(src) for _ in range(args.runs))}
    out = out_dir / "vh"
    for label, extra in (
        ("vhtool init (copy)", ["--link", "copy"]),
        ("vhtool init (hardlink)", ["--link", "hardlink"]),
    ):
        wall, rss = median_of([*VHTOOL, "init", str(src), "-o", str(out), "--quiet", *extra], out, args.runs)
        results[label] = {"wall_s": wall, "rss_mib": rss}
    wall, rss = median_of([*VHTOOL, "init", str(src), "-o", str(out), "--quiet", "--no-fsync"], out, args.runs)
    results["vhtool init (copy, --no-fsync)"] = {"wall_s": wall, "rss_mib": rss}

    # make-reference of a policy made once
    policy = out_dir / "policy"
    shutil.rmtree(policy, ignore_errors=True)
    run_measured([*VHTOOL, "init", str(src), "-o", str(policy), "--quiet"])
    ref = out_dir / "ref"
    for n in (6, 16):
        wall, rss = median_of(
            [*VHTOOL, "make-reference", str(policy), "--shared-layers", str(n), "-o", str(ref), "--quiet"],
            ref,
            args.runs,
        )
        results[f"vhtool make-reference --shared-layers {n}"] = {"wall_s": wall, "rss_mib": rss}

    if not args.skip_trl:
        trl_out = out_dir / "trl"
        code = (
            "import sys, torch, warnings; warnings.simplefilter('ignore');"
            "from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as C;"
            "m = C.from_pretrained(sys.argv[1], dtype=torch.bfloat16, v_head_init_strategy='normal');"
            "m.save_pretrained(sys.argv[2])"
        )
        shutil.rmtree(trl_out, ignore_errors=True)
        r = run_measured([sys.executable, "-c", code, str(src), str(trl_out)])
        results["TRL from_pretrained + save_pretrained"] = {
            "wall_s": r.wall,
            "rss_mib": r.max_rss_mib,
            "output_files": len(weight_files(trl_out)),
        }
        shutil.rmtree(trl_out, ignore_errors=True)

    if not args.skip_70b:
        big = make_llama(WORK / "llama-70b-sparse", "70b", sparse=True)
        out70 = out_dir / "vh70"
        wall, rss = median_of(
            [*VHTOOL, "init", str(big), "-o", str(out70), "--link", "hardlink", "--quiet"], out70, args.runs
        )
        results["vhtool init 70B-shaped (hardlink)"] = {"wall_s": wall, "rss_mib": rss}

    yardstick = max(results["cp -r"]["wall_s"], results["hashlib.sha256"]["wall_s"])
    report = {
        "checkpoint": {"path": str(src), "weight_bytes": size, "bytes_on_disk": dir_size(src)},
        "results": results,
        "ratios": {
            "init_copy_vs_max(cp,hash)": results["vhtool init (copy)"]["wall_s"] / yardstick,
            "init_copy_nofsync_vs_max(cp,hash)": results["vhtool init (copy, --no-fsync)"]["wall_s"] / yardstick,
            "make_reference_6_vs_max(cp,hash)": results["vhtool make-reference --shared-layers 6"]["wall_s"]
            / yardstick,
        },
        "goals": {
            "init copy <= 1.3x max(cp -r, hashlib)": results["vhtool init (copy)"]["wall_s"] <= 1.3 * yardstick,
            "init hardlink <= 2 s": results["vhtool init (hardlink)"]["wall_s"] <= 2.0,
            "init rss <= 400 MiB": max(
                results["vhtool init (copy)"]["rss_mib"], results["vhtool init (hardlink)"]["rss_mib"]
            )
            <= 400,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
