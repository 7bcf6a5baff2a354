"""Shared pieces of the benchmarks: synthetic Llama checkpoints and whole-process timing with peak RSS.

Not a test module. Checkpoints are written tensor by tensor (constant memory):

* ``make_llama(dir, preset="1b")``: TinyLlama-1.1B shapes, bf16, 3 shards, random normal data
  (std 0.02), a real config.json; about 2.2 GB on disk.
* ``make_llama(dir, preset="70b", sparse=True)``: Llama-2-70B shapes, bf16, 30 shards, real
  headers and *sparse* data regions (holes): about 140 GB apparent size, almost no disk used.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from tests.synthetic import PRESETS, llama_tensors, make_llama  # noqa: E402,F401  (shared with the tests)


@dataclass
class Run:
    wall: float
    max_rss_mib: float
    rc: int


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None) -> Run:
    """Runs ``cmd`` as a child process; returns its wall time and its own peak RSS.

    The RSS comes from GNU time (``/usr/bin/time -f %M``) when present: ``wait4`` on a child
    forked from this (large) Python process would report at least this process's own size.
    """
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    rss_file = None
    full = cmd
    if gnu_time:
        fd, rss_file = tempfile.mkstemp(prefix="vhtool-rss-")
        os.close(fd)
        full = [gnu_time, "-q", "-f", "%M", "-o", rss_file, *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err[-2000:]}")
    rss_mib = usage.ru_maxrss / 1024
    if rss_file:
        try:
            rss_mib = int(Path(rss_file).read_text().split()[-1]) / 1024
        finally:
            os.unlink(rss_file)
    return Run(wall=wall, max_rss_mib=rss_mib, rc=proc.returncode)


def median_runs(make_cmd, n: int = 5, before=None) -> Run:  # type: ignore[no-untyped-def]
    """Median wall (and max RSS) of ``n`` runs of ``make_cmd()``; ``before()`` runs untimed before each."""
    runs = []
    for _ in range(n):
        if before:
            before()
        runs.append(run_measured(make_cmd()))
    return Run(wall=statistics.median(r.wall for r in runs), max_rss_mib=max(r.max_rss_mib for r in runs), rc=0)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
