"""Benchmark ``vhtool inspect-layers --json``: whole-process wall time and peak RSS, vs loading the model.

Cases (medians of 5 runs after one warm-up, the child's own peak RSS from wait4):

* the ~1.1B Llama of benchlib (bf16, 3 shards, 2.2 GB), raw and as a ``vhtool init`` checkpoint (hardlinked);
* a 70B-shaped Llama (30 shards, real headers, sparse data regions: ~140 GB apparent, no disk used);
* the floors: ``python -c pass`` and importing the CLI;
* once: the load-the-model path, TRL 1.12.0's ``AutoModelForCausalLMWithValueHead.from_pretrained`` on the 1B,
  printing the parameter names (what people do today to see what a checkpoint holds).

Goal (issue 7): <= 0.6 s and <= 120 MiB for both checkpoints. Run from the repo root::

    .venv/bin/python scripts/bench_inspect.py [--runs 5] [--skip-load]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Run, make_llama, median_runs, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench-work"
PY = sys.executable
VHTOOL = str(Path(PY).with_name("vhtool"))

LOAD_MODEL = (
    "import sys\n"
    "from trl.experimental.ppo import AutoModelForCausalLMWithValueHead\n"
    "m = AutoModelForCausalLMWithValueHead.from_pretrained(sys.argv[1])\n"
    "print('\\n'.join(n for n, _ in m.named_parameters()))\n"
)


def _fmt(run: Run) -> str:
    return f"{run.wall:6.3f} s  {run.max_rss_mib:7.1f} MiB"


def exec_rss_cpu(cmd: list[str], env: dict[str, str]) -> tuple[float, float] | None:
    """Peak RSS (MiB) and CPU seconds (user + sys) of ``cmd`` measured by GNU time, whose tiny process forks it.

    CPU time is the figure to read on a shared, loaded machine: wall time there includes waiting for a core.

    benchlib's wait4 figure can never be below the benchmark process's own RSS at fork time (the
    child's peak counts the pre-exec image), so small commands all read ~38 MiB there.
    """
    gnu_time = shutil.which("time") or "/usr/bin/time"
    if not os.path.exists(gnu_time):
        return None
    proc = subprocess.run(
        [gnu_time, "-f", "%M %U %S", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    rss, user, system = proc.stderr.strip().splitlines()[-1].split()
    return int(rss) / 1024, float(user) + float(system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-load", action="store_true", help="Skip the (slow) load-the-model baseline.")
    args = parser.parse_args()

    one_b = make_llama(WORK / "llama-1b", "1b")
    big = make_llama(WORK / "llama-70b-sparse", "70b", sparse=True)
    policy = WORK / "inspect" / "llama-1b-value-head"
    if not (policy / "vhtool.json").exists():
        policy.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([VHTOOL, "init", str(one_b), "-o", str(policy), "--link", "hardlink", "-q"], check=True)

    cases: list[tuple[str, list[str]]] = [
        ("python -c pass (floor)", [PY, "-c", "pass"]),
        ("import vhtool.cli.app", [PY, "-c", "import vhtool.cli.app"]),
        ("inspect-layers --json 1B raw", [VHTOOL, "inspect-layers", str(one_b), "--json"]),
        ("inspect-layers --json 1B vhtool init", [VHTOOL, "inspect-layers", str(policy), "--json"]),
        ("inspect-layers --json 70B sparse", [VHTOOL, "inspect-layers", str(big), "--json"]),
        ("inspect-layers 70B table", [VHTOOL, "inspect-layers", str(big)]),
    ]
    # An installed package has its .pyc files; a PYTHONDONTWRITEBYTECODE shell would recompile vhtool on every run.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "vhtool")], env=env, check=True)
    results: dict[str, dict[str, float | None]] = {}
    print(f"load average before: {os.getloadavg()}, cores: {os.cpu_count()}")
    for label, cmd in cases:
        run_measured(cmd, env=env)  # warm-up (page cache, .pyc)
        r = median_runs(lambda cmd=cmd: cmd, n=args.runs)
        cpu_runs = [m for m in (exec_rss_cpu(cmd, env) for _ in range(args.runs)) if m is not None]
        rss = max((m[0] for m in cpu_runs), default=None)
        cpu = statistics.median(m[1] for m in cpu_runs) if cpu_runs else None
        results[label] = {
            "wall_s": round(r.wall, 4),
            "max_rss_mib": round(r.max_rss_mib, 1),
            "exec_rss_mib": round(rss, 1) if rss is not None else None,
            "cpu_s": round(cpu, 3) if cpu is not None else None,
        }
        extra = f"  GNU time: RSS {rss:.1f} MiB, CPU {cpu:.2f} s" if rss is not None and cpu is not None else ""
        print(f"{label:40s} {_fmt(r)}{extra}", flush=True)
    if not args.skip_load:
        load_cmd = [PY, "-c", LOAD_MODEL, str(one_b)]
        r = run_measured(load_cmd)
        m = exec_rss_cpu(load_cmd, env)
        results["TRL AutoModelForCausalLMWithValueHead 1B (once)"] = {
            "wall_s": round(r.wall, 4),
            "max_rss_mib": round(r.max_rss_mib, 1),
            "exec_rss_mib": round(m[0], 1) if m else None,
            "cpu_s": round(m[1], 3) if m else None,
        }
        extra = f"  GNU time: RSS {m[0]:.1f} MiB, CPU {m[1]:.2f} s" if m else ""
        print(f"{'TRL load 1B + print names (once)':40s} {_fmt(r)}{extra}", flush=True)
    goal = all(
        (v["wall_s"] or 0) <= 0.6 and (v["max_rss_mib"] or 0) <= 120
        for k, v in results.items()
        if k.startswith("inspect-layers")
    )
    print(f"goal (<= 0.6 s, <= 120 MiB) met: {goal}")
    out = WORK / "inspect" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": args.runs, "results": results, "goal_met": goal}, indent=2) + "\n")


if __name__ == "__main__":
    main()
