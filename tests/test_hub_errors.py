"""Hub failures through real commands: one clean line, one exit-code rule, no retries.

The rule (``../shared/SPEC.md``, README "Exit codes"): offline mode (``HF_HUB_OFFLINE=1``, a setting) is exit 2;
a Hub that cannot be reached or fails (refused, reset, timeout, 5xx: transient) is exit 1, reading and pushing
alike. Every command runs as the ``vhtool`` console script in a subprocess, against a loopback port nobody
listens on (refused), a loopback socket that counts the connections it receives and drops each one (so a retry
storm shows as a count, never as a timing), or in offline mode. Nothing is monkeypatched.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import json_error

VHTOOL = str(Path(sys.executable).with_name("vhtool"))
HUB_ID = "someone/not-cached-policy"
ADAPTER_ID = "someone/not-cached-adapter"
#: The most connections a failing command may open: the requests it makes, each once, never retried.
MAX_CONNECTIONS = 3


def _refused_endpoint() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens: a connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class DroppingHub:
    """A loopback socket that accepts every connection and resets it at once, counting them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            conn.close()

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept() on Linux; shutdown() does, at once
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def dropping() -> Iterator[DroppingHub]:
    hub = DroppingHub()
    yield hub
    hub.close()


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
    """``run(*args, offline=False, endpoint=None, **env)`` -> the CompletedProcess of the console script."""
    base = dict(os.environ)
    for name in ("HF_TOKEN", "HF_HUB_DISABLE_XET"):
        base.pop(name, None)
    base.update(
        {
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TRANSFORMERS_OFFLINE": "0",
            "NO_COLOR": "1",
        }
    )

    def go(*args: Any, offline: bool = False, endpoint: str | None = None, **env: str) -> Any:
        e = {**base, "HF_HUB_OFFLINE": "1" if offline else "0", "HF_ENDPOINT": endpoint or _refused_endpoint(), **env}
        return subprocess.run(
            [VHTOOL, *[str(a) for a in args]], env=e, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )

    yield go


def _assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
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
def test_unreachable_hub_exit_1_without_retries(
    index: int, policy: Path, run: Callable[..., Any], dropping: DroppingHub
) -> None:
    args, name = _reading_commands(policy)[index]
    proc = run(*args, endpoint=dropping.endpoint)
    _assert_clean_failure(proc, 1, name, "unreachable", "try again later", "hf download", "pass the local directory")
    assert 1 <= dropping.connections <= MAX_CONNECTIONS, f"{dropping.connections} connections: {proc.stderr}"


@pytest.mark.parametrize("index", range(len(_IDS)), ids=_IDS)
def test_offline_mode_exit_2_and_no_connection(
    index: int, policy: Path, run: Callable[..., Any], dropping: DroppingHub
) -> None:
    args, name = _reading_commands(policy)[index]
    proc = run(*args, offline=True, endpoint=dropping.endpoint)
    _assert_clean_failure(proc, 2, name, "offline", "hf download")
    assert dropping.connections == 0


def test_refused_port_read_and_push_exit_1(policy: Path, run: Callable[..., Any]) -> None:
    """Issue 20, point 10: reading (init) and pushing to a refused port fail alike, exit 1."""
    proc = run("init", HUB_ID, "-o", "init")
    _assert_clean_failure(proc, 1, HUB_ID, "unreachable", "builtin:tiny-gpt2")
    proc = run("push", policy, "user/tiny-policy", HF_TOKEN="hf_unused_token")
    _assert_clean_failure(proc, 1, "user/tiny-policy", "the Hub is unreachable", "nothing was pushed")
    for args in (["init", HUB_ID, "-o", "init"], ["push", policy, "user/tiny-policy"]):
        proc = run(*args, "--json", HF_TOKEN="hf_unused_token")
        assert json_error(proc.stdout, 1)["type"] == "HubUnreachableError"


def test_offline_read_and_push_exit_2(policy: Path, run: Callable[..., Any], dropping: DroppingHub) -> None:
    """Issue 20, point 10: offline mode is a setting, exit 2, for reading (init) and pushing alike."""
    proc = run("init", HUB_ID, "-o", "init", offline=True, endpoint=dropping.endpoint)
    _assert_clean_failure(proc, 2, HUB_ID, "HF_HUB_OFFLINE is set", "hf download")
    proc = run("push", policy, "user/tiny-policy", offline=True, endpoint=dropping.endpoint, HF_TOKEN="hf_unused")
    _assert_clean_failure(proc, 2, "HF_HUB_OFFLINE is set; unset it to push", "nothing was pushed")
    assert dropping.connections == 0


def test_push_to_dropping_hub_exit_1_without_retries(
    policy: Path, run: Callable[..., Any], dropping: DroppingHub
) -> None:
    proc = run(
        "push", policy, "user/tiny-policy", endpoint=dropping.endpoint, HF_TOKEN="hf_unused_token_for_this_test"
    )
    _assert_clean_failure(proc, 1, "user/tiny-policy", "the Hub is unreachable", "nothing was pushed")
    assert 1 <= dropping.connections <= MAX_CONNECTIONS, dropping.connections


def test_push_of_a_hub_id_or_builtin_says_it_needs_a_directory(run: Callable[..., Any]) -> None:
    proc = run("push", HUB_ID, "user/x", "--dry-run")
    _assert_clean_failure(proc, 2, HUB_ID, "local checkpoint directory", "hf download")
    proc = run("push", "builtin:tiny-gpt2", "user/x", "--dry-run")
    _assert_clean_failure(proc, 2, "builtin:tiny-gpt2", "vhtool init")


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
