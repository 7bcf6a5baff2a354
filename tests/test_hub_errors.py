"""Hub failures through real commands: one clean line, exit 2 (reading) or 1 (push), in seconds, no retries.

Every command runs as the ``vhtool`` console script in a subprocess against an endpoint that refuses
connections (a loopback port nobody listens on), or in offline mode. Nothing is monkeypatched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

VHTOOL = str(Path(sys.executable).with_name("vhtool"))
HUB_ID = "someone/not-cached-policy"
ADAPTER_ID = "someone/not-cached-adapter"
LIMIT_S = 10.0


def _refused_endpoint() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens: a connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local policy checkpoint made from a built-in (offline, in-process)."""
    from typer.testing import CliRunner

    from vhtool.cli.app import app

    out = tmp_path_factory.mktemp("policy") / "policy"
    res = CliRunner().invoke(app, ["init", "builtin:tiny-gpt2", "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``run(*args, offline=False, **env)`` -> (CompletedProcess, seconds) of the console script in ``tmp_path``."""
    base = dict(os.environ)
    base.pop("HF_TOKEN", None)
    base.update(
        {
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TRANSFORMERS_OFFLINE": "0",
            "NO_COLOR": "1",
        }
    )

    def go(*args: Any, offline: bool = False, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
        e = {**base, "HF_HUB_OFFLINE": "1" if offline else "0", "HF_ENDPOINT": _refused_endpoint(), **env}
        start = time.monotonic()
        proc = subprocess.run(
            [VHTOOL, *[str(a) for a in args]], env=e, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        return proc, time.monotonic() - start

    yield go


def _assert_clean_failure(proc: subprocess.CompletedProcess[str], seconds: float, code: int, *names: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert seconds < LIMIT_S, f"took {seconds:.1f} s: {proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for name in names:
        assert name in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr
    assert proc.stdout == ""


def _reading_commands(policy: Path) -> list[tuple[list[Any], str]]:
    """(arguments, the id the error must name) for every command that reads a Hub id."""
    return [
        (["score", HUB_ID, "--text", "hi"], HUB_ID),
        (["inspect-layers", HUB_ID], HUB_ID),
        (["verify", HUB_ID], HUB_ID),
        (["make-reference", HUB_ID, "-o", "ref"], HUB_ID),
        (["attach-reward-adapter", HUB_ID, ADAPTER_ID, "-o", "out"], HUB_ID),
        (["attach-reward-adapter", policy, ADAPTER_ID, "-o", "out"], ADAPTER_ID),
        (["convert", HUB_ID, "--to", "seq-cls", "-o", "conv"], HUB_ID),
        (["init", HUB_ID, "-o", "init"], HUB_ID),
    ]


_IDS = ["score", "inspect", "verify", "make-reference", "attach-hub-policy", "attach-hub-adapter", "convert", "init"]


@pytest.mark.parametrize("index", range(len(_IDS)), ids=_IDS)
def test_unreachable_hub_fails_fast_with_exit_2(index: int, policy: Path, run: Callable[..., Any]) -> None:
    args, name = _reading_commands(policy)[index]
    proc, seconds = run(*args)
    _assert_clean_failure(proc, seconds, 2, name, "hf download", "pass the local directory")


@pytest.mark.parametrize("index", range(len(_IDS)), ids=_IDS)
def test_offline_mode_gives_the_same_message(index: int, policy: Path, run: Callable[..., Any]) -> None:
    args, name = _reading_commands(policy)[index]
    proc, seconds = run(*args, offline=True)
    _assert_clean_failure(proc, seconds, 2, name, "offline", "hf download")


def test_unreachable_message_suggests_a_builtin(run: Callable[..., Any]) -> None:
    proc, seconds = run("inspect-layers", HUB_ID)
    _assert_clean_failure(proc, seconds, 2, HUB_ID, "builtin:tiny-gpt2")


def test_push_to_unreachable_hub_fails_fast_exit_1(policy: Path, run: Callable[..., Any]) -> None:
    proc, seconds = run("push", policy, "user/tiny-policy", HF_TOKEN="hf_unused_token_for_this_test")
    _assert_clean_failure(proc, seconds, 1, "user/tiny-policy", "the Hub is unreachable", "nothing was pushed")


def test_push_of_a_hub_id_or_builtin_says_it_needs_a_directory(run: Callable[..., Any]) -> None:
    proc, seconds = run("push", HUB_ID, "user/x", "--dry-run")
    _assert_clean_failure(proc, seconds, 2, HUB_ID, "local checkpoint directory", "hf download")
    proc, seconds = run("push", "builtin:tiny-gpt2", "user/x", "--dry-run")
    _assert_clean_failure(proc, seconds, 2, "builtin:tiny-gpt2", "vhtool init")


# --------------------------------------------------------------------------------------- builtin: names


def test_verify_accepts_builtin_names(cli: Callable[..., Any]) -> None:
    res = cli("verify", "builtin:tiny-gpt2", "--json")
    # a built-in is a plain model (no value head, no vhtool.json): verify reports that, having read it
    assert res.exit_code == 1, res.stderr
    assert "no such file" not in res.stderr and "value head" in res.stdout


def test_builtin_names_accepted_where_a_checkpoint_is_expected(
    cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = cli("inspect-layers", "builtin:tiny-llama", "--json")
    assert res.exit_code == 0, res.stderr
    res = cli("convert", "builtin:tiny-gpt2", "--to", "seq-cls", "-o", tmp_path / "c")
    assert "no such file" not in res.stderr


def test_make_reference_of_a_builtin_writes_to_the_current_directory(
    cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = cli("make-reference", "builtin:tiny-gpt2", "--shared-layers", "1", "--json", "--no-fsync")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "tiny-gpt2-reference" / "vhtool.json").is_file()
    from vhtool.builtin import builtin_path

    assert not (builtin_path("tiny-gpt2").parent / "tiny-gpt2-reference").exists()


def test_make_reference_and_attach_from_an_initd_builtin(
    cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("init", "builtin:tiny-gpt2", "--quiet", "--no-fsync").exit_code == 0
    res = cli("make-reference", "tiny-gpt2-value-head", "--shared-layers", "1", "--json", "--no-fsync")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "tiny-gpt2-value-head-reference" / "vhtool.json").is_file()
    res = cli("verify", "tiny-gpt2-value-head-reference")
    assert res.exit_code == 0, res.stderr
