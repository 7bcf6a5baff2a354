"""What `vhtool score` shows a person at a terminal (a pty): phases, a known total, speed, a histogram —
and none of it when stderr is a pipe. ``--json`` carries the histogram's numbers."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from typer.testing import CliRunner

    from vhtool.cli.app import app

    root = tmp_path_factory.mktemp("display")
    res = CliRunner().invoke(app, ["init", "builtin:tiny-gpt2", "-o", str(root / "policy"), "-q"])
    assert res.exit_code == 0, res.stderr
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"record {i} " * (1 + i % 5)}) + "\n" for i in range(100)))
    return {"policy": root / "policy", "data": data}


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    return env


def run_on_a_terminal(*args: object) -> tuple[int, str]:
    """Runs vhtool with stderr on a pseudo-terminal; returns the exit code and what the terminal received."""
    master, slave = os.openpty()
    code = "import sys; from vhtool.cli.app import main; sys.argv[0] = 'vhtool'; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *(str(a) for a in args)],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=_env(),
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r", "\n")


def test_a_terminal_shows_phases_a_known_total_speed_and_a_histogram(setup: dict[str, Path], tmp_path: Path) -> None:
    rc, screen = run_on_a_terminal("score", setup["policy"], "-i", setup["data"], "-o", tmp_path / "s.jsonl")
    assert rc == 0, screen
    assert "loading the model" in screen and "scoring" in screen
    assert "/100 records" in screen and "/? records" not in screen.split("scoring", 1)[1]  # the total is known
    assert "records/s" in screen and "tokens/s" in screen
    assert "histogram" in screen and "█" in screen and "vhtool score" in screen  # the summary table
    counts = [int(m) for m in re.findall(r"█+ (\d+)", screen)]
    assert sum(counts) == 100  # the bars count every record


def test_a_pipe_gets_no_progress_and_no_summary_table(setup: dict[str, Path], tmp_path: Path) -> None:
    code = "import sys; from vhtool.cli.app import main; sys.argv[0] = 'vhtool'; main()"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "score",
            str(setup["policy"]),
            "-i",
            str(setup["data"]),
            "-o",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for word in ("records/s", "/100 records", "loading the model", "histogram", "█", "\r", "vhtool score", "mean"):
        assert word not in res.stderr, word  # the README: progress and summaries on a terminal only
    assert res.stderr == ""  # --json carries the summary for a script


def test_json_carries_the_histogram(setup: dict[str, Path], cli: Any) -> None:
    res = cli("score", setup["policy"], "-i", setup["data"], "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)["summary"]
    hist = summary["histogram"]
    assert 1 <= len(hist) <= 10 and sum(b["count"] for b in hist) == summary["count"] == 100
    assert hist[0]["from"] <= summary["min"] and hist[-1]["to"] >= summary["max"]
    assert all(a["to"] == pytest.approx(b["from"]) for a, b in zip(hist, hist[1:]))
