"""The file world tested like a database: random sequences of commands, saves and interrupts over user files and a
Hub repo holding files vhtool did not write (issue 20).

A hypothesis ``RuleBasedStateMachine`` drives real commands in one workspace that also holds a user's things (a
``.git`` folder, a script, data, a folder of notes) and a few output slots, plus a loopback Hub repo that already
holds files of other tools. The rules: ``init`` (single-file and sharded sources), ``make-reference``, ``convert``,
``save_pretrained`` of a loaded policy (main and non-main process, single-file and sharded), ``push``, ``--force``
on every kind of target (the user's folder and the current directory included), and ``init`` interrupted by
SIGINT, SIGTERM or SIGKILL at a random moment (SIGKILL is followed by a rerun, as a user would).

Invariants after every step:

* no byte of a file vhtool did not write changes or disappears, locally or on the Hub;
* every output slot either verifies or is absent;
* no temporary, aside or lock file is left behind;
* a non-main-process save changes nothing.

Seeded (``derandomize``) and bounded, so CI runs the same few dozen steps every time.
``scripts/model_based_campaign.py`` runs a longer, random campaign of the same machine (``VHTOOL_MBT_EXAMPLES``,
``VHTOOL_MBT_STEPS``, ``VHTOOL_MBT_RANDOM``) and reports what it did (``VHTOOL_MBT_REPORT``: steps by rule,
interrupts by signal, invariant checks) for docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.hub_fixtures import HubServer
from vhtool.checkpoint.verify_op import verify_checkpoint

pytestmark = pytest.mark.slow

SLOTS = ("a", "b", "c")
#: Files of other tools already on the Hub repo: a push must leave every byte of them.
FOREIGN_REMOTE = {
    "consolidated.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "model.fp16.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "onnx/model.onnx": b"not really onnx",
    "notes.md": b"# the team's notes\n",
}
#: The user's things in the workspace: nothing vhtool does may touch them.
USER_FILES = {
    ".git/HEAD": b"ref: refs/heads/main\n",
    ".git/config": b"[core]\n\tbare = false\n",
    "scripts/train.py": b"print('train')\n",
    "data.jsonl": b'{"text": "hello"}\n',
    "user/notes.txt": b"mine\n",
    "user/config.json": b'{"mine": true}\n',
}
LEFTOVER_MARKS = (".vhtool-tmp", ".vhtool-lock", ".vhtool-old", ".vhtool-save-")
#: What the machine did, for the campaign report: steps by rule, interrupts by signal and outcome, checks.
STATS: dict[str, int] = {}


def _count(key: str) -> None:
    STATS[key] = STATS.get(key, 0) + 1


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _verifies(path: Path) -> bool:
    return verify_checkpoint(path).ok


def run_machine(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: dict[str, Path]) -> None:
    """Builds the state machine over ``sources`` (init inputs) and runs it as a test."""
    from typer.testing import CliRunner

    import vhtool
    from vhtool.cli.app import app

    runner = CliRunner()
    policy_model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(sources["policy"]))
    counter = iter(range(10_000))

    class Workspace(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            n = next(counter)
            self.root = tmp_path / f"ws{n}"
            self.root.mkdir()
            for rel, data in USER_FILES.items():
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                (self.root / rel).write_bytes(data)
            self.user_digest = _digest(self.root)
            self.repo = f"user/policy-{n}"
            hub.create_repo(self.repo)
            hub.commit_files(self.repo, dict(FOREIGN_REMOTE))
            self.kinds: dict[str, str | None] = dict.fromkeys(SLOTS)
            self.pending_kill = False
            monkeypatch.chdir(self.root)

        # ------------------------------------------------------------------------------------------ helpers

        def cli(self, *args: str) -> Any:
            _count(f"step:{args[0]}")
            res = runner.invoke(app, [str(a) for a in args])
            # Exit 0, 1 or 2 with a message: never a traceback.
            assert res.exception is None or isinstance(res.exception, SystemExit), (args, res.exception, res.output)
            assert res.exit_code in (0, 1, 2), (args, res.exit_code, res.output)
            return res

        def slot(self, name: str) -> Path:
            return self.root / name

        def _target(self, name: str) -> str:
            return name if name in SLOTS else {"user": "user", "cwd": "."}[name]

        # -------------------------------------------------------------------------------------------- rules

        @rule(
            source=st.sampled_from(["single", "sharded"]),
            out=st.sampled_from([*SLOTS, "user", "cwd"]),
            force=st.booleans(),
        )
        def init(self, source: str, out: str, force: bool) -> None:
            res = self.cli("init", sources[source], "-o", self._target(out), *(["--force"] if force else []))
            if out not in SLOTS:
                assert res.exit_code == 2, res.output  # the user's folder and the current directory: refused
                return
            before = self.kinds[out]
            if before is None:
                assert res.exit_code == 0, res.output
            elif not force:
                assert res.exit_code == 2, res.output
            if res.exit_code == 0:
                self.kinds[out] = "policy"

        @precondition(lambda self: any(k == "policy" for k in self.kinds.values()))
        @rule(data=st.data(), out=st.sampled_from([*SLOTS, "user"]), force=st.booleans(), shared=st.integers(0, 2))
        def make_reference(self, data: st.DataObject, out: str, force: bool, shared: int) -> None:
            policy = data.draw(st.sampled_from([s for s in SLOTS if self.kinds[s] == "policy"]))
            args = ["make-reference", policy, "--shared-layers", str(shared), "-o", self._target(out)]
            res = self.cli(*args, *(["--force"] if force else []))
            if out == policy or out not in SLOTS:
                assert res.exit_code == 2, res.output
            elif res.exit_code == 0:
                self.kinds[out] = "reference"

        @precondition(lambda self: any(k == "policy" for k in self.kinds.values()))
        @rule(
            data=st.data(), out=st.sampled_from(SLOTS), to=st.sampled_from(["seq-cls", "sidecar"]), force=st.booleans()
        )
        def convert(self, data: st.DataObject, out: str, to: str, force: bool) -> None:
            src = data.draw(st.sampled_from([s for s in SLOTS if self.kinds[s] == "policy"]))
            res = self.cli("convert", src, "--to", to, "-o", out, *(["--force"] if force else []))
            if out == src:
                assert res.exit_code == 2, res.output
            elif res.exit_code == 0:
                self.kinds[out] = f"convert-{to}"

        @rule(out=st.sampled_from(SLOTS), main=st.booleans(), sharded=st.booleans())
        def save_pretrained(self, out: str, main: bool, sharded: bool) -> None:
            kind = self.kinds[out]
            if kind not in (None, "policy"):
                return  # saving a policy over a reference or a critic is the user's business, not an invariant
            before = _digest(self.slot(out)) if self.slot(out).exists() else None
            kwargs: dict[str, Any] = {"max_shard_size": "40KB"} if sharded else {}
            _count(f"step:save_pretrained:{'main' if main else 'non-main'}:{'sharded' if sharded else 'single'}")
            policy_model.save_pretrained(str(self.slot(out)), is_main_process=main, **kwargs)
            if not main:  # a non-main rank writes nothing and deletes nothing
                after = _digest(self.slot(out)) if self.slot(out).exists() else None
                assert after == before
                return
            self.kinds[out] = "policy"

        @precondition(lambda self: any(k is not None for k in self.kinds.values()))
        @rule(data=st.data())
        def push(self, data: st.DataObject) -> None:
            src = data.draw(st.sampled_from([s for s in SLOTS if self.kinds[s] is not None]))
            res = self.cli("push", src, self.repo)
            assert res.exit_code == 0, res.output

        @rule(
            source=st.sampled_from(["single", "sharded", "big"]),
            out=st.sampled_from(SLOTS),
            sig=st.sampled_from([signal.SIGINT, signal.SIGTERM, signal.SIGKILL]),
            delay=st.floats(0.0, 1.5),
        )
        def interrupted_init(self, source: str, out: str, sig: signal.Signals, delay: float) -> None:
            force = ["--force"] if self.slot(out).exists() else []
            # the big source is copied byte by byte (~70 MB), so a signal can land in the middle of the write
            link = ["--link", "copy"] if source == "big" else []
            args = ["init", str(sources[source]), "-o", out, *force, *link]
            # A signal while Python itself starts (site, imports) is Python's business, not vhtool's: the clock
            # starts once the CLI is imported and about to run the command.
            starter = (
                "import sys; from vhtool.cli.app import main; sys.stderr.write('ready\\n'); sys.stderr.flush(); "
                f"sys.argv = ['vhtool', *{args!r}]; main()"
            )
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            proc = subprocess.Popen(
                [sys.executable, "-c", starter],
                cwd=self.root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            assert proc.stderr is not None
            assert proc.stderr.readline() == b"ready\n"
            time.sleep(delay)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
            code = proc.returncode
            finished = code == 0
            _count(f"interrupt:{sig.name}:{'finished first' if finished else 'interrupted'}")
            if sig == signal.SIGKILL and not finished:
                # A killed run cannot clean up after itself: the next run on the same output does. Rerun it.
                rerun = self.cli("init", sources[source], "-o", out, "--force", *link)
                assert rerun.exit_code == 0, rerun.output
                self.kinds[out] = "policy"
                return
            assert code in (0, 130, 143, -sig), (code, err)
            if finished:
                self.kinds[out] = "policy"

        # --------------------------------------------------------------------------------------- invariants

        @invariant()
        def user_files_untouched(self) -> None:
            _count("invariant checks")
            assert _digest(self.root / ".git") == {
                k[len(".git/") :]: v for k, v in self.user_digest.items() if k.startswith(".git/")
            }
            for rel, digest in self.user_digest.items():
                assert (self.root / rel).is_file(), rel
                assert hashlib.sha256((self.root / rel).read_bytes()).hexdigest() == digest, rel
            assert sorted(p.name for p in (self.root / "user").iterdir()) == ["config.json", "notes.txt"]

        @invariant()
        def outputs_verify_or_are_absent(self) -> None:
            for name in SLOTS:
                path = self.slot(name)
                if not path.exists():
                    assert self.kinds[name] is None, name
                    continue
                assert _verifies(path), (name, self.kinds[name], verify_checkpoint(path))

        @invariant()
        def nothing_left_behind(self) -> None:
            left = [p.name for p in self.root.iterdir() if any(m in p.name for m in LEFTOVER_MARKS)]
            assert not left, left

        @invariant()
        def foreign_remote_files_kept(self) -> None:
            for path, data in FOREIGN_REMOTE.items():
                assert hub.file_bytes(self.repo, path) == data, path

    settings_ = settings(
        max_examples=int(os.environ.get("VHTOOL_MBT_EXAMPLES", "6")),
        stateful_step_count=int(os.environ.get("VHTOOL_MBT_STEPS", "10")),
        deadline=None,
        derandomize=not os.environ.get("VHTOOL_MBT_RANDOM"),
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    STATS.clear()
    try:
        run_state_machine_as_test(Workspace, settings=settings_)
    finally:
        report = os.environ.get("VHTOOL_MBT_REPORT")
        if report:
            Path(report).write_text(json.dumps({"workspaces": next(counter), **STATS}, indent=2, sort_keys=True))


def test_model_based_file_world(
    hub_server: HubServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    saved_model: Callable[..., Path],
    initialised: Callable[..., Path],
) -> None:
    from tests.synthetic import make_llama

    big = dict(hidden=256, intermediate=688, layers=4, heads=8, kv_heads=4, vocab=64_000, shards=3)
    sources = {
        "single": saved_model("llama"),
        "sharded": saved_model("llama", sharded=True),
        "big": make_llama(tmp_path / "big-source", big, sparse=True),
        "policy": initialised("llama"),
    }
    run_machine(hub_server, tmp_path, monkeypatch, sources)
