"""Crash safety and hostile inputs, with real child processes: SIGKILL mid-write, two runs racing for one
output, a file-size limit mid-write, and malformed or malicious sources. Nothing may be half-written."""

from __future__ import annotations

import json
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import (
    TINY_CONFIG,
    json_error,
    make_reward_adapter,
    make_tiny_source,
    write_header_doc,
    write_safetensors_raw,
)
from tests.synthetic import make_llama
from vhtool.checkpoint.atomic import lock_sibling, tmp_sibling
from vhtool.checkpoint.safetensors_io import read_header
from vhtool.checkpoint.verify_op import verify_checkpoint

REPO = Path(__file__).resolve().parents[1]
#: Llama shapes with a very large vocabulary: ~330 MB of bf16 weights in 2 shards, written sparse (holes), so the
#: fixture costs nothing while every command really writes ~330 MB (about a second); hidden 256 keeps the
#: reward adapter that must match it tiny.
KILL_PRESET = dict(hidden=256, intermediate=688, layers=4, heads=8, kv_heads=4, vocab=320_000, shards=2)


def make_kill_model(directory: Path) -> Path:
    """The sparse ~340 MB Llama checkpoint the kill tests run ``init`` on (see :data:`KILL_PRESET`)."""
    return make_llama(directory, KILL_PRESET, sparse=True)


def vhtool_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "vhtool", *(str(a) for a in args)]


# --------------------------------------------------------------------------------------------- snapshots


Snapshot = dict[str, tuple[int, int, int, str | None]]


def snapshot(root: Path, *, full_hash: bool = False) -> Snapshot:
    """relpath -> (size, mtime_ns, inode, sha256 of small files or of all with ``full_hash``).

    Outputs are replaced by rename, never rewritten in place, so an intact old tree keeps every inode and mtime.
    """
    from vhtool.checkpoint.copyio import hash_file

    snap: Snapshot = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            digest = hash_file(p) if full_hash or st.st_size < 1 << 20 else None
            snap[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_ino, digest)
    return snap


def leftovers(out: Path) -> set[str]:
    """Entries next to ``out`` other than ``out`` itself (the work dirs hold nothing else)."""
    return {p.name for p in out.parent.iterdir()} - {out.name}


# --------------------------------------------------------------------------------------------- kill harness


@dataclass(frozen=True)
class WriteCase:
    """A writing command under test: ``argv(sources, out, variant, fsync)`` builds its command line."""

    name: str
    argv: Callable[[dict[str, Path], Path, int, bool], list[str]]


def _nofsync(fsync: bool) -> list[str]:
    return [] if fsync else ["--no-fsync"]


def _init_argv(src: dict[str, Path], out: Path, variant: int, fsync: bool) -> list[str]:
    return vhtool_argv("init", src["model"], "-o", out, "--seed", variant, *_nofsync(fsync))


def _reference_argv(src: dict[str, Path], out: Path, variant: int, fsync: bool) -> list[str]:
    return vhtool_argv(
        "make-reference", src["policy"], "--shared-layers", 1 + variant % 3, "-o", out, *_nofsync(fsync)
    )


def _attach_argv(src: dict[str, Path], out: Path, variant: int, fsync: bool) -> list[str]:
    name = f"rm{variant % 3}"  # a different adapter name (and subfolder) tells a new OUT from the old one
    return vhtool_argv(
        "attach-reward-adapter", src["policy"], src["adapter"], "--adapter-name", name, "-o", out, *_nofsync(fsync)
    )


#: Every command that writes a checkpoint; a new one is one more line.
WRITE_CASES = [
    WriteCase("init", _init_argv),
    WriteCase("make-reference", _reference_argv),
    WriteCase("attach-reward-adapter", _attach_argv),
]


@dataclass
class KillOutcome:
    killed: bool
    returncode: int
    saw_tmp: bool
    state: str  # "absent" | "old" | "new"


def run_and_kill(
    argv: list[str], out: Path, *, after_tmp: float | None = None, after_start: float = 0.0
) -> KillOutcome:
    """Starts ``argv``; SIGKILLs it ``after_tmp`` seconds after the temporary sibling appears (or ``after_start``)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = tmp_sibling(out.absolute())
    saw = False
    if after_tmp is not None:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if tmp.exists():
                saw = True
                break
            time.sleep(0.0005)
        time.sleep(after_tmp)
    else:
        time.sleep(after_start)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if not killed:
        assert proc.returncode == 0, err.decode(errors="replace")
    return KillOutcome(killed=killed, returncode=proc.returncode, saw_tmp=saw, state="?")


def write_window(argv: list[str], out: Path) -> float:
    """Seconds from the temporary sibling's appearance to the end of an uninterrupted run of ``argv``.

    Kill delays are fractions of it, so the kills land mid-write however fast this machine writes.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = tmp_sibling(out.absolute())
    seen = None
    while proc.poll() is None:
        if seen is None and tmp.exists():
            seen = time.monotonic()
        time.sleep(0.0005)
    ended = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")
    return ended - seen if seen is not None else 0.0


def check_after_kill(out: Path, before: Snapshot | None, *, full_hash: bool = False) -> str:
    """Asserts the only acceptable states after a kill; returns ``absent``, ``old`` or ``new``."""
    allowed = {tmp_sibling(out).name, lock_sibling(out).name}
    extra = leftovers(out) - allowed
    assert not extra, f"unexpected files next to OUT after a kill: {sorted(extra)}"
    if not out.exists():
        assert before is None, "the previous OUT disappeared"
        return "absent"
    if before is not None and snapshot(out, full_hash=full_hash) == before:
        return "old"
    result = verify_checkpoint(out)  # a complete new OUT (the kill hit after the rename) must verify
    assert result.ok, [c for c in result.checks if not c.ok]
    return "new"


def kill_campaign(
    case: WriteCase,
    sources: dict[str, Path],
    out: Path,
    *,
    fsync: bool,
    delays: list[tuple[str, float]],
    full_hash: bool = False,
    variant0: int = 0,
) -> list[KillOutcome]:
    """Kills ``case`` once per delay, checking OUT after each; then a clean run must succeed and tidy up.

    ``delays`` are ``("tmp", s)`` (s after the temporary sibling appears) or ``("start", s)`` (after spawning).
    When OUT exists beforehand every kill targets a ``--force`` replacement of it, which must survive intact.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    before: Snapshot | None = snapshot(out, full_hash=full_hash) if out.exists() else None
    replace = before is not None
    outcomes = []
    for i, (anchor, delay) in enumerate(delays, variant0 + 1):
        argv = case.argv(sources, out, i, fsync) + (["--force"] if replace else [])
        timing = {"after_tmp": delay} if anchor == "tmp" else {"after_start": delay}
        o = run_and_kill(argv, out, **timing)
        o.state = check_after_kill(out, before, full_hash=full_hash)
        if o.state == "new":  # the run completed its rename before the kill: it is the new previous OUT
            before, replace = snapshot(out, full_hash=full_hash), True
        outcomes.append(o)
    final = subprocess.run(
        case.argv(sources, out, variant0 + 99, fsync) + ["--force"], capture_output=True, check=False
    )
    assert final.returncode == 0, final.stderr.decode(errors="replace")
    assert leftovers(out) == set(), f"the next run did not clean up: {leftovers(out)}"
    result = verify_checkpoint(out, hash_all=full_hash)
    assert result.ok, [c for c in result.checks if not c.ok]
    return outcomes


@pytest.fixture(scope="module")
def kill_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sparse kill model, a policy made from it by ``init``, and a reward adapter that fits it."""
    root = tmp_path_factory.mktemp("kill-sources")
    model = make_kill_model(root / "llama")
    policy = root / "policy"
    done = subprocess.run(vhtool_argv("init", model, "-o", policy, "--no-fsync"), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return {"model": model, "policy": policy, "adapter": make_reward_adapter(root / "adapter", KILL_PRESET)}


@pytest.fixture(scope="module")
def small_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ~37 MB Llama (the ``tiny`` preset), for the tests that only need a run to take a moment."""
    return {"model": make_llama(tmp_path_factory.mktemp("small-model") / "llama", "tiny")}


@pytest.mark.parametrize("case", WRITE_CASES, ids=lambda c: c.name)
def test_sigkill_leaves_old_or_nothing(case: WriteCase, kill_sources: dict[str, Path], tmp_path: Path) -> None:
    """SIGKILL at fixed and random points: first with no OUT (fsync on), then replacing OUT (--force, no fsync)."""
    rng = random.Random(case.name)
    out = tmp_path / "work" / "out"
    probe = tmp_path / "probe" / "out"
    probe.parent.mkdir()
    window = write_window(case.argv(kill_sources, probe, 0, True), probe)  # how long a write takes here
    fresh = [("tmp", 0.0), ("tmp", rng.uniform(0.05, 0.6) * window)]
    if case.name == "init":
        fresh.insert(0, ("start", 0.25))  # also once before the output exists at all (during start-up)
    outcomes = kill_campaign(case, kill_sources, out, fsync=True, delays=fresh)
    assert out.exists()  # the clean run after the kills wrote it: now kill runs that replace it
    window = write_window(case.argv(kill_sources, out, 50, False) + ["--force"], out)  # replacing, no fsync
    replacing = [("tmp", rng.uniform(0.0, 0.25) * window), ("tmp", rng.uniform(0.25, 0.6) * window)]
    outcomes += kill_campaign(case, kill_sources, out, fsync=False, delays=replacing, variant0=10)
    killed = [o for o in outcomes if o.killed]
    assert all(o.returncode == -signal.SIGKILL for o in killed)
    assert len(killed) >= 3, outcomes  # the model is large enough that nearly every kill lands mid-write
    assert sum(o.saw_tmp for o in killed) >= 3, outcomes
    assert sum(o.state in ("absent", "old") for o in killed) >= 3, outcomes


# --------------------------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("force", [False, True], ids=["fresh", "force"])
def test_two_runs_one_output(small_sources: dict[str, Path], tmp_path: Path, force: bool) -> None:
    out = tmp_path / "out"
    if force:
        assert subprocess.run(vhtool_argv("init", small_sources["model"], "-o", out, "--no-fsync")).returncode == 0
    argvs = [
        vhtool_argv("init", small_sources["model"], "-o", out, "--seed", seed, "--no-fsync", *(["--force"] * force))
        for seed in (1, 2)
    ]
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0, results
    loser = [(rc, err) for rc, err in results if rc != 0]
    # Either they overlapped (the loser is refused by the lock) or one finished before the other started.
    assert codes in ([0, 1], [0, 2], [0, 0]), results
    for rc, err in loser:
        if rc == 1:
            assert "another vhtool run is writing" in err and err.count("\n") == 1
        else:
            assert "already exists" in err
    assert leftovers(out) == set()
    result = verify_checkpoint(out)
    assert result.ok
    seeds = {json.loads((out / "vhtool.json").read_text())["value_head"]["seed"]}
    assert seeds <= {1, 2}  # one run's output, whole


# --------------------------------------------------------------------------------------------- write failures


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us

    return apply


@pytest.mark.parametrize("replace", [False, True], ids=["fresh", "force"])
def test_file_size_limit_mid_write(small_sources: dict[str, Path], tmp_path: Path, replace: bool) -> None:
    out = tmp_path / "out"
    before = None
    if replace:
        make_tiny_source(out)  # any previous OUT: it must survive the failed replacement untouched
        before = snapshot(out, full_hash=True)
    argv = vhtool_argv("init", small_sources["model"], "-o", out, *(["--force"] if replace else []))
    proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=_limit_file_size(4 << 20), check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("Error: writing") and "File too large" in proc.stderr
    assert "nothing was written" in proc.stderr and "Traceback" not in proc.stderr
    assert leftovers(out) == set()
    if replace:
        assert snapshot(out, full_hash=True) == before
    else:
        assert not out.exists()


# --------------------------------------------------------------------------------------------- hostile inputs


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sharded_source(d: Path) -> Path:
    """A two-shard checkpoint by hand (tensors a and b), with an index."""
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(TINY_CONFIG))
    write_safetensors_raw(d / "s1.safetensors", {"a": ("F32", (8, 4), np.zeros(32, "<f4").tobytes())})
    write_safetensors_raw(d / "s2.safetensors", {"b": ("F32", (4,), np.ones(4, "<f4").tobytes())})
    index = {"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def _h_index_parent(d: Path, outside: Path) -> None:
    _sharded_source(d)
    shutil.copyfile(d / "s2.safetensors", outside / "x.safetensors")
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["b"] = "../outside/x.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


def _h_index_absolute(d: Path, outside: Path) -> None:
    _sharded_source(d)
    shutil.copyfile(d / "s2.safetensors", outside / "x.safetensors")
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["b"] = str(outside / "x.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


def _h_weights_symlink_out(d: Path, outside: Path) -> None:
    make_tiny_source(d)
    shutil.move(d / "model.safetensors", outside / "model.safetensors")
    (d / "model.safetensors").symlink_to(outside / "model.safetensors")


def _h_tokenizer_symlink_out(d: Path, outside: Path) -> None:
    make_tiny_source(d)
    (outside / "secret.txt").write_text("SECRET-DO-NOT-COPY")
    (d / "tokenizer.json").symlink_to(outside / "secret.txt")


def _h_header_too_long(d: Path, outside: Path) -> None:
    make_tiny_source(d)
    write_header_doc(
        d / "model.safetensors",
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        b"\0" * 4,
        declared=10_000,
    )


def _h_header_over_cap(d: Path, outside: Path) -> None:
    make_tiny_source(d)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 200_000_000) + b"{}" + b"\0" * 64)


def _h_offsets_overlap(d: Path, outside: Path) -> None:
    make_tiny_source(d)
    doc = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    write_header_doc(d / "model.safetensors", doc, b"\0" * 24)


def _h_offsets_past_end(d: Path, outside: Path) -> None:
    make_tiny_source(d)
    write_header_doc(
        d / "model.safetensors", {"a": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}, b"\0" * 16
    )


def _h_config_list(d: Path, outside: Path) -> None:
    make_tiny_source(d)
    (d / "config.json").write_text("[1, 2, 3]")


def _h_pickle_only(d: Path, outside: Path) -> None:
    import torch

    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY_CONFIG))
    torch.save({"transformer.wte.weight": torch.zeros(8, 4)}, d / "pytorch_model.bin")


HOSTILE: list[tuple[str, Callable[[Path, Path], None], str]] = [
    ("index-parent", _h_index_parent, "not a file inside the checkpoint"),
    ("index-absolute", _h_index_absolute, "not a file inside the checkpoint"),
    ("weights-symlink-out", _h_weights_symlink_out, "points outside the checkpoint"),
    ("tokenizer-symlink-out", _h_tokenizer_symlink_out, "points outside the checkpoint"),
    ("header-longer-than-file", _h_header_too_long, "truncated or corrupt file"),
    ("header-over-cap", _h_header_over_cap, "above the 100000000 byte cap"),
    ("offsets-overlap", _h_offsets_overlap, "overlap"),
    ("offsets-past-end", _h_offsets_past_end, "truncated file"),
    ("config-not-object", _h_config_list, "must be a JSON object"),
    ("pickle-only", _h_pickle_only, "never unpickles them by default"),
]


@pytest.mark.parametrize(("build", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_source_init_exit_2_nothing_written(
    cli: Callable[..., Any], tmp_path: Path, build: Callable[[Path, Path], None], message: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "src"
    build(src, outside)
    before_src, before_outside = _tree(src), _tree(outside)
    work = tmp_path / "work"
    work.mkdir()
    res = cli("init", src, "-o", work / "out")
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("Error: ") and message in res.stderr and res.stderr.count("\n") == 1
    assert "Traceback" not in res.output
    assert list(work.iterdir()) == []  # no OUT, no temporary sibling, no lock
    assert _tree(src) == before_src and _tree(outside) == before_outside  # input never modified


@pytest.mark.parametrize(
    ("build", "message"),
    [h[1:] for h in HOSTILE if h[0] != "pickle-only"],
    ids=[h[0] for h in HOSTILE if h[0] != "pickle-only"],
)
def test_hostile_source_verify_fails(
    cli: Callable[..., Any], tmp_path: Path, build: Callable[[Path, Path], None], message: str
) -> None:
    """verify reports each hostile layout as failed checks (exit 1), never a crash."""
    outside = tmp_path / "outside"
    outside.mkdir()
    build(tmp_path / "src", outside)
    res = cli("verify", tmp_path / "src", "--json")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["failures"]
    assert any(message in c["detail"] for c in doc["checks"] if not c["ok"]), doc


_INSPECTED = [  # inspect-layers reads no tokenizer file; it reads a pickle when asked, so it names the flag
    (name, build, "pass --allow-pickle" if name == "pickle-only" else message)
    for name, build, message in HOSTILE
    if name != "tokenizer-symlink-out"
]


@pytest.mark.parametrize(("build", "message"), [h[1:] for h in _INSPECTED], ids=[h[0] for h in _INSPECTED])
def test_hostile_source_inspect_layers_exit_2(
    cli: Callable[..., Any], tmp_path: Path, build: Callable[[Path, Path], None], message: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    build(tmp_path / "src", outside)
    before = _tree(tmp_path)
    res = cli("inspect-layers", tmp_path / "src", "--json")
    assert res.exit_code == 2, res.output
    assert message in json_error(res.stdout, 2)["message"]
    assert res.stderr.startswith("Error: ") and message in res.stderr
    assert _tree(tmp_path) == before


class _Evil:
    """Unpickling this runs a shell command: weights_only=True must refuse it before it runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Plain:
    """An ordinary object: no code runs when it is unpickled, but it is not a tensor either."""

    def __init__(self) -> None:
        self.values = [1.0, 2.0]


def test_pickle_with_code_refused_even_with_allow_pickle(cli: Callable[..., Any], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(TINY_CONFIG))
    marker = tmp_path / "pwned"
    import torch

    torch.save({"transformer.wte.weight": torch.zeros(8, 4), "x": _Evil(marker)}, src / "pytorch_model.bin")
    assert not marker.exists()
    work = tmp_path / "work"
    work.mkdir()
    res = cli("init", src, "-o", work / "out", "--allow-pickle")
    assert res.exit_code == 2, res.output
    assert "weights_only=True" in res.stderr
    assert not marker.exists()  # the payload never ran
    assert list(work.iterdir()) == []
    # A plain pickle of a class instance (no code, but not tensors) is refused the same way.
    with open(src / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"transformer.wte.weight": _Plain()}, fh)
    res = cli("init", src, "-o", work / "out", "--allow-pickle")
    assert res.exit_code == 2 and "weights_only=True" in res.stderr
    assert list(work.iterdir()) == []


def test_pickle_with_allow_pickle_is_read_weights_only(cli: Callable[..., Any], tmp_path: Path) -> None:
    import torch

    src = tmp_path / "src"
    _h_pickle_only(src, tmp_path)
    res = cli("init", src, "-o", tmp_path / "out", "--allow-pickle", "--no-fsync")
    assert res.exit_code == 0, res.output
    assert verify_checkpoint(tmp_path / "out").ok
    hdr = read_header(tmp_path / "out" / "model.safetensors")
    assert set(hdr.tensors) == {"transformer.wte.weight", "v_head.summary.weight", "v_head.summary.bias"}
    assert torch.load(src / "pytorch_model.bin", weights_only=True)["transformer.wte.weight"].shape == (8, 4)


def test_nan_value_head_refused_then_repaired_by_force(cli: Callable[..., Any], tmp_path: Path) -> None:
    """A value head holding NaN: verify fails; init refuses (the source has a head) unless --reinit-head."""
    src = make_tiny_source(tmp_path / "src", head=np.array([1.0, np.nan, 2.0, np.inf]))
    res = cli("verify", src, "--json")
    assert res.exit_code == 1
    assert "NaN/inf" in next(c["detail"] for c in json.loads(res.stdout)["checks"] if c["name"] == "value_head")
    res = cli("init", src, "-o", tmp_path / "out")
    assert res.exit_code == 2 and "already has a value head" in res.stderr
    assert not (tmp_path / "out").exists()
    res = cli("init", src, "-o", tmp_path / "out", "--reinit-head", "--no-fsync")
    assert res.exit_code == 0, res.output
    result = verify_checkpoint(tmp_path / "out", hash_all=True)
    assert result.ok, [c for c in result.checks if not c.ok]
