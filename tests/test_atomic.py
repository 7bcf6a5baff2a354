"""The one atomic writer: the fallback replace never loses OUT, permissions follow the umask, Ctrl-C and SIGTERM
stop work at once and leave nothing behind, and saves know their rank.

Issue 20, points 1, 4, 7, 8 and 12, each on a real command or a real multi-process save.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tree_bytes
from tests.synthetic import make_llama
from vhtool.checkpoint import atomic, interrupt
from vhtool.checkpoint.atomic import aside_sibling, lock_sibling, tmp_sibling
from vhtool.checkpoint.copyio import run_parallel
from vhtool.checkpoint.manifest import read_manifest, write_manifest
from vhtool.checkpoint.verify_op import verify_checkpoint
from vhtool.errors import OperationError

REPO = Path(__file__).resolve().parents[1]


def siblings(out: Path) -> set[str]:
    """vhtool's own hidden entries next to ``out`` (temporary, lock, aside)."""
    return {p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.vhtool-")}


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Sets the process umask for the test; restores it after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.fixture
def previous(tmp_path: Path, cli: Callable[..., Any]) -> tuple[Path, dict[str, str]]:
    """A previous vhtool output OUT and its bytes."""
    out = tmp_path / "OUT"
    res = cli("init", "builtin:tiny-gpt2", "-o", out, "-q")
    assert res.exit_code == 0, res.stderr
    return out, tree_bytes(out)


def _fail_renames(monkeypatch: pytest.MonkeyPatch, *sources: Path) -> list[tuple[str, str]]:
    """Makes ``os.rename`` from any of ``sources`` fail with EIO (once each); returns the renames attempted."""
    real = os.rename
    pending = {str(s) for s in sources}
    seen: list[tuple[str, str]] = []

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        seen.append((str(src), str(dst)))
        if str(src) in pending:
            pending.discard(str(src))
            raise OSError(5, "Input/output error", str(src))
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    return seen


def _no_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """The platform without renameat2 (macOS, some filesystems): the one function that asks it says no."""
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)


# ----------------------------------------------------------------------------------- point 7: the fallback


def test_fallback_replace_without_exchange_leaves_the_new_out_and_no_aside(
    previous: tuple[Path, dict[str, str]], cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = previous
    _no_exchange(monkeypatch)
    res = cli("init", "builtin:tiny-gpt2", "-o", out, "--force", "--seed", "7", "-q")
    assert res.exit_code == 0, res.stderr
    assert tree_bytes(out) != before  # the new output (another seed) is in place
    assert verify_checkpoint(out).ok
    assert siblings(out) == set()


def test_fallback_second_rename_fails_out_keeps_its_old_content(
    previous: tuple[Path, dict[str, str]], cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = previous
    _no_exchange(monkeypatch)
    seen = _fail_renames(monkeypatch, tmp_sibling(out))
    res = cli("init", "builtin:tiny-gpt2", "-o", out, "--force", "--seed", "7", "-q")
    assert res.exit_code == 1
    assert (str(out), str(aside_sibling(out))) in seen  # the fallback really ran: OUT was moved aside...
    assert tree_bytes(out) == before  # ...and put back
    err = " ".join(res.stderr.split())
    assert "was left as it was" in err and "nothing was written" not in err and "Traceback" not in err
    assert siblings(out) == set()  # no temporary, lock or aside copy left


def test_fallback_when_even_the_restore_fails_the_next_run_restores_the_aside_copy(
    previous: tuple[Path, dict[str, str]], cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = previous
    _no_exchange(monkeypatch)
    _fail_renames(monkeypatch, tmp_sibling(out), aside_sibling(out))
    res = cli("init", "builtin:tiny-gpt2", "-o", out, "--force", "--seed", "7", "-q")
    assert res.exit_code == 1
    err = " ".join(res.stderr.split())
    assert str(aside_sibling(out)) in err and "restores it" in err and "nothing was written" not in err
    assert not out.exists() and tree_bytes(aside_sibling(out)) == before  # the only copy, kept
    monkeypatch.undo()
    # The next run on OUT (without --force) puts the previous output back instead of deleting it, then refuses.
    res = cli("init", "builtin:tiny-gpt2", "-o", out, "-q")
    assert res.exit_code == 2 and "exists" in res.stderr
    assert tree_bytes(out) == before
    assert siblings(out) == set()


def test_an_aside_copy_from_a_crash_between_the_renames_is_restored_not_deleted(
    previous: tuple[Path, dict[str, str]], cli: Callable[..., Any]
) -> None:
    out, before = previous
    os.rename(out, aside_sibling(out))  # SIGKILL after "OUT -> aside", before "tmp -> OUT"
    res = cli("init", "builtin:tiny-gpt2", "-o", out, "--force", "--seed", "7", "-q")
    assert res.exit_code == 0, res.stderr  # restored first, then replaced as --force asked
    assert tree_bytes(out) != before and verify_checkpoint(out).ok
    assert siblings(out) == set()


def test_an_aside_copy_beside_a_complete_out_is_a_finished_replace_and_is_removed(
    previous: tuple[Path, dict[str, str]], cli: Callable[..., Any]
) -> None:
    out, before = previous
    (aside := aside_sibling(out)).mkdir()  # SIGKILL after "tmp -> OUT", before the aside copy was removed
    (aside / "config.json").write_text("{}")
    res = cli("verify", out)
    assert res.exit_code == 0
    res = cli("init", "builtin:tiny-gpt2", "-o", out, "--force", "--seed", "7", "-q")
    assert res.exit_code == 0, res.stderr  # the next writing run on OUT removes the stale aside copy
    assert tree_bytes(out) != before and verify_checkpoint(out).ok
    assert siblings(out) == set()


# ------------------------------------------------------------------------------ point 8: permissions


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o027])
def test_outputs_follow_the_umask(mask: int, tmp_path: Path, cli: Callable[..., Any], umask: Any) -> None:
    umask(mask)
    out = tmp_path / "OUT"
    res = cli("init", "builtin:tiny-gpt2", "-o", out, "--link", "copy", "-q")
    assert res.exit_code == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name
    single = tmp_path / "one.txt"
    atomic.write_file_atomic(single, "x\n")
    assert stat.S_IMODE(single.stat().st_mode) == 0o666 & ~mask


def test_a_fresh_save_pretrained_folder_follows_the_umask(tmp_path: Path, umask: Any) -> None:
    import vhtool
    from vhtool.builtin import builtin_path

    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(builtin_path("tiny-gpt2")))
    for mask in (0o022, 0o002):
        umask(mask)
        d = tmp_path / f"saved-{mask:o}"
        model.save_pretrained(str(d))
        assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's drwx------
        assert stat.S_IMODE((d / "model.safetensors").stat().st_mode) == 0o666 & ~mask
        assert siblings(d) == set()


# ------------------------------------------------------------------------- point 12: vhtool.json


def test_write_manifest_is_the_atomic_file_writer(
    previous: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = previous
    manifest = read_manifest(out / "vhtool.json")
    path = out / "vhtool.json"
    # Another writer holds the manifest: a clear failure, the file unchanged.
    fd = atomic._acquire_lock(lock_sibling(path))
    try:
        with pytest.raises(OperationError, match="another vhtool run is writing"):
            write_manifest(out, manifest.replace(role="reference"))
    finally:
        atomic._release_lock(lock_sibling(path), fd)
    # The rename fails: the old manifest stays, and no temporary file or lock is left in the folder.
    real = os.replace

    def failing(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OperationError, match="nothing was written"):
        write_manifest(out, manifest.replace(role="reference"))
    monkeypatch.setattr(os, "replace", real)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    # A stale temporary file of a killed writer (the old fixed name) is not what is read, and is cleaned up.
    (out / ".vhtool.json.vhtool-tmp").write_text("{half")
    write_manifest(out, manifest.replace(role="reference"))
    assert read_manifest(path).role == "reference"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# -------------------------------------------------------------------------- point 4: Ctrl-C, SIGTERM

#: Five shards of ~115 MB each (sparse: free to create, but a --link copy really writes every byte).
FIVE_SHARDS = dict(hidden=1024, intermediate=8192, layers=10, heads=8, kv_heads=8, vocab=1000, shards=5)


@pytest.fixture(scope="module")
def five_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama(tmp_path_factory.mktemp("five") / "src", FIVE_SHARDS, sparse=True)


def _tmp_files(tmp: Path) -> dict[str, int]:
    try:
        return {p.name: p.stat().st_size for p in tmp.iterdir()}
    except FileNotFoundError:
        return {}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_init_starts_no_new_shard_and_leaves_nothing(
    sig: int, code: int, five_shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "OUT"
    tmp = tmp_sibling(out)
    shard_size = {p.name: p.stat().st_size for p in five_shards.glob("model-*.safetensors")}
    argv = [sys.executable, "-m", "vhtool", "init", str(five_shards), "-o", str(out), "--link", "copy", "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        grown: dict[str, int] = {}
        while proc.poll() is None:  # wait until the temporary output exists and has grown (bytes, not time)
            grown = _tmp_files(tmp)
            if sum(grown.values()) >= 24 << 20:
                break
            time.sleep(0.0005)
        assert proc.poll() is None, "the copy ended before it could be interrupted"
        proc.send_signal(sig)
        started = {n for n in _tmp_files(tmp) if n in shard_size} | {n for n in grown if n in shard_size}
        seen, peak = set(grown), sum(grown.values())
        while proc.poll() is None:
            now = _tmp_files(tmp)
            seen |= set(now)
            peak = max(peak, sum(now.values()))
            time.sleep(0.0005)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err
    assert 1 <= len(started) <= 2  # two copy threads
    # No shard that had not started when the signal came was ever begun, nor the head shard or the manifest.
    assert {n for n in seen if n in shard_size} <= started, sorted(seen)
    assert not {"model-value-head.safetensors", "vhtool.json"} & seen
    # The folder never grew past the shards that had started (a whole run writes ~575 MB).
    assert peak <= sum(shard_size[n] for n in started) + (1 << 20)
    assert not out.exists() and siblings(out) == set()


def _raise_interrupt() -> str:
    raise KeyboardInterrupt


def test_run_parallel_cancels_queued_jobs_and_stops_running_ones_on_an_interrupt() -> None:
    ran: list[str] = []
    stopped = threading.Event()

    def running() -> str:
        ran.append("running")
        try:
            for _ in range(60_000):  # at most a minute if the flag never came: the assertion below then fails
                interrupt.check()
                time.sleep(0.001)
        except interrupt.Interrupted:
            stopped.set()
            raise
        return "finished"

    def queued() -> str:
        ran.append("queued")
        return "queued"

    with pytest.raises(KeyboardInterrupt):
        run_parallel([running, _raise_interrupt, queued, queued, queued], workers=2)
    assert stopped.is_set()  # the running job left at its next check
    assert ran == ["running"]  # no queued job started
    assert not interrupt.requested()  # the flag is lowered again for whatever this process does next
    assert run_parallel([queued, queued], workers=2) == ["queued", "queued"]


def test_sigterm_during_a_library_save_removes_the_temporary_folder_then_terminates(tmp_path: Path) -> None:
    dest = tmp_path / "saved"
    script = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from vhtool.models.saving import save_replacing\n"
        "def write(tmp):\n"
        "    (tmp / 'model.safetensors').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "save_replacing(Path(sys.argv[1]), write)\n"
    )
    res = subprocess.run([sys.executable, "-c", script, str(dest)], capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGTERM, res.stderr  # ended by SIGTERM as its owner expects...
    assert not dest.exists() and siblings(dest) == set()  # ...after the clean-up


# ---------------------------------------------------------------------------- point 1: rank-aware saves


def _save_rounds(src: str, dest: str, main: bool, seed: float, rounds: int, barrier: Any, bad: Any) -> None:
    """One process of a multi-process save: ``rounds`` saves into ``dest``, in step with the other process."""
    import torch

    import vhtool

    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(src)
    with torch.no_grad():
        model.v_head.summary.bias.fill_(seed)
    first = seed == 1.0
    for r in range(rounds):
        barrier.wait(timeout=120)
        if r % 2 and not first:  # odd rounds: the second process saves right after the first (the lost-weights order)
            barrier.wait(timeout=120)
        model.save_pretrained(dest, is_main_process=main)
        if r % 2 and first:
            barrier.wait(timeout=120)
        barrier.wait(timeout=120)
        if main or seed == 2.0:  # one process checks what the round left
            result = verify_checkpoint(dest)
            if not result.ok:
                bad.put(f"round {r}: {[c for c in result.checks if not c.ok]}")
        barrier.wait(timeout=120)


@pytest.mark.parametrize("mains", [1, 2], ids=["main-and-non-main", "two-mains"])
def test_two_processes_saving_at_once_leave_one_complete_checkpoint(
    mains: int, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    src = tmp_path / "policy"
    assert cli("init", "builtin:tiny-gpt2", "-o", src, "-q").exit_code == 0
    dest = tmp_path / "run" / "checkpoint"
    ctx = multiprocessing.get_context("spawn")
    barrier, bad = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_save_rounds, args=(str(src), str(dest), True, 1.0, 4, barrier, bad)),
        ctx.Process(target=_save_rounds, args=(str(src), str(dest), mains == 2, 2.0, 4, barrier, bad)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    problems = []
    while not bad.empty():
        problems.append(bad.get())
    assert problems == []
    assert verify_checkpoint(dest).ok
    assert sorted(p.name for p in dest.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
    assert siblings(dest) == set()


def test_a_non_main_save_touches_nothing(tmp_path: Path, cli: Callable[..., Any]) -> None:
    import vhtool

    d = tmp_path / "D"
    assert cli("init", "builtin:tiny-gpt2", "-o", d, "--link", "hardlink", "-q").exit_code == 0
    before = tree_bytes(d)
    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(d))
    model.save_pretrained(str(d), is_main_process=False)
    model.save_pretrained(str(d), False)  # transformers' positional spelling
    assert tree_bytes(d) == before and siblings(d) == set()
    fresh = tmp_path / "fresh"
    model.save_pretrained(str(fresh), is_main_process=False)
    assert not fresh.exists() and siblings(fresh) == set()
    assert cli("verify", d).exit_code == 0


def test_a_non_main_peft_save_touches_nothing(saved_model: Any, tmp_path: Path) -> None:
    from peft import LoraConfig

    import vhtool

    cfg = LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")
    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(saved_model("gpt2")), peft_config=cfg)
    target = tmp_path / "adapter"
    model.save_pretrained(target)
    before = tree_bytes(target)
    with torch_no_grad():
        model.v_head.summary.bias.fill_(0.5)
    model.save_pretrained(target, is_main_process=False)
    assert tree_bytes(target) == before and siblings(target) == set()
    model.save_pretrained(tmp_path / "fresh", is_main_process=False)
    assert not (tmp_path / "fresh").exists()


def torch_no_grad() -> Any:
    import torch

    return torch.no_grad()
