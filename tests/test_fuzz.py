"""Fuzzing the file readers through the CLI: random safetensors headers, configs, indexes and vhtool.json documents.

Whatever the bytes, ``verify`` and ``inspect-layers`` must answer with exit 0, 1 or 2 and a one-line message:
no traceback, no unexpected exception (the "run with VHTOOL_DEBUG=1" fallback), no hang.
``scripts/reliability_report.py`` runs the same strategies with many more examples.

"No hang" is asserted as work done, not as time taken (a wall-clock limit fails on a loaded machine): each
command runs under a budget of Python function calls (:data:`CALL_BUDGET`, far above what a run makes) and
is stopped by :class:`WorkBudgetExceeded` when a reader loops or does work in proportion to a size that a
header merely declares. The count is the same on an idle and on a busy machine.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import make_tiny_source

#: Per-strategy example counts; the test suite runs 200 in all. ``VHTOOL_FUZZ_SCALE`` multiplies them
#: (``scripts/reliability_report.py`` sets it).
SCALE = max(1, int(os.environ.get("VHTOOL_FUZZ_SCALE", "1")))
EXAMPLES = {k: v * SCALE for k, v in {"header": 70, "config": 35, "index": 45, "manifest": 50}.items()}
#: Examples run, exit codes seen and the most Python calls one command made, for the report script.
STATS: dict[str, int] = {"examples": 0, "runs": 0, "exit0": 0, "exit1": 0, "exit2": 0, "max_calls": 0}
#: verify alternates between its table and --json (by the example's size); inspect-layers prints its table.
COMMANDS = (("verify",), ("verify", "--json"), ("inspect-layers",))
#: Python function calls one fuzzed command may make (a run on a tiny checkpoint makes well under a tenth).
CALL_BUDGET = 2_000_000

DTYPES = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "f32", "", "F8_E4M3", "Q4"]

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
json_docs = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=12,
)
small_ints = st.integers(-4, 70) | st.sampled_from([2**31, 2**63 - 1, 2**64, -(2**63)])


@st.composite
def tensor_entry(draw: st.DrawFn) -> Any:
    """A header entry that is usually almost right: the interesting bugs sit next to valid input."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_docs)
    entry: dict[str, Any] = {
        "dtype": draw(st.sampled_from(DTYPES)),
        "shape": draw(st.lists(small_ints, max_size=3) | json_docs),
        "data_offsets": draw(st.lists(small_ints, min_size=0, max_size=3) | json_docs),
    }
    for key in draw(st.sets(st.sampled_from(["dtype", "shape", "data_offsets"]), max_size=1)):
        del entry[key]
    return entry


@st.composite
def safetensors_file(draw: st.DrawFn) -> bytes:
    """Bytes of a would-be safetensors file: JSON-ish header, random length prefix, data, truncation."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        body = draw(st.binary(max_size=64))
    else:
        names = st.sampled_from(["a", "b", "v_head.summary.weight", "v_head.summary.bias", "__metadata__", "é"])
        doc: Any = draw(st.dictionaries(names, tensor_entry(), max_size=4)) if kind < 3 else draw(json_docs)
        body = json.dumps(doc).encode()
    declared = draw(st.sampled_from(["true", "true", "random", "huge"]))
    n = {"true": len(body), "random": draw(st.integers(0, 400)), "huge": draw(st.integers(0, 2**64 - 1))}[declared]
    data = draw(st.binary(max_size=128))
    raw = struct.pack("<Q", n) + body + data
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


paths = st.sampled_from(
    ["s1.safetensors", "s2.safetensors", "../s1.safetensors", "/etc/passwd", "", "a/../../x", "missing.safetensors"]
)
index_docs = st.one_of(
    json_docs,
    st.fixed_dictionaries(
        {"weight_map": st.dictionaries(st.sampled_from(["a", "b", "c", "v_head.summary.weight"]), paths, max_size=4)}
    ),
    st.fixed_dictionaries({"weight_map": json_docs, "metadata": json_docs}),
)
config_docs = st.one_of(
    json_docs,
    st.fixed_dictionaries(
        {"model_type": json_scalars, "n_embd": small_ints | json_scalars, "vocab_size": small_ints},
        optional={"is_encoder_decoder": json_scalars, "architectures": json_docs, "text_config": json_docs},
    ),
)


def _manifest_docs(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    file_entry = st.fixed_dictionaries(
        {},
        optional={
            "size": small_ints | json_scalars,
            "sha256": st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64) | json_scalars,
            "how": st.sampled_from(["write", "copy", "symlink", "hardlink"]) | json_scalars,
        },
    )
    files = st.dictionaries(st.sampled_from(["model.safetensors", "x.bin", "../y", "sub/z.safetensors"]), file_entry)
    adapter = st.fixed_dictionaries(
        {}, optional={"name": json_scalars, "subfolder": paths | json_scalars, "files": json_docs}
    )

    def mutate(parts: tuple[Any, Any, Any, str]) -> Any:
        f, a, extra, key = parts
        doc = json.loads(json.dumps(base))
        if key == "files":
            doc["files"] = f
        elif key == "reward_adapter":
            doc["reward_adapter"] = a
        else:
            doc[key] = extra
        return doc

    mutated = st.tuples(
        files, adapter, json_docs, st.sampled_from(["files", "reward_adapter", "source", "role", "value_head"])
    ).map(mutate)
    return st.one_of(json_docs, mutated)


# --------------------------------------------------------------------------------------------- harness


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid single-file policy and a valid two-shard checkpoint, both with vhtool.json, copied per example."""
    from vhtool.checkpoint.init_op import HeadSpec, init_checkpoint

    root = tmp_path_factory.mktemp("fuzz-bases")
    src = make_tiny_source(root / "src")
    init_checkpoint(src, root / "single", head=HeadSpec(), source={"model": "x", "kind": "local"}, durable=False)
    init_checkpoint(
        src, root / "sharded", head=HeadSpec(), source={"model": "x", "kind": "local"}, link="hardlink", durable=False
    )
    return {"single": root / "single", "sharded": root / "sharded"}


_APP: list[Any] = []


def fuzz_app() -> Any:
    """The two fuzzed commands in their own small Typer app.

    typer rebuilds the whole command tree on every ``CliRunner.invoke`` (about 0.1 s for the full app); two
    commands keep a fuzz example cheap. They are the same command functions that ``vhtool.cli.app`` registers.
    """
    if not _APP:
        import typer

        from vhtool.cli.inspect_cmd import inspect_command
        from vhtool.cli.verify_cmd import verify_command

        app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        app.command("verify")(verify_command)
        app.command("inspect-layers")(inspect_command)
        _APP.append(app)
    return _APP[0]


class WorkBudgetExceeded(BaseException):  # noqa: N818 - not an error the CLI may catch and word: it must escape
    """A command made more than :data:`CALL_BUDGET` calls: it loops, or works in proportion to a declared size."""


@contextmanager
def call_budget(limit: int = CALL_BUDGET) -> Iterator[list[int]]:
    """Counts the Python calls made in this thread; raises :class:`WorkBudgetExceeded` past ``limit``.

    A BaseException, so that neither the CLI's error mapping nor the test runner's catching turns it into an
    exit code: it reaches the test as itself.
    """
    count = [0]
    previous = sys.getprofile()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            count[0] += 1
            if count[0] > limit:
                raise WorkBudgetExceeded(f"more than {limit} Python calls: {frame.f_code.co_qualname}")

    sys.setprofile(profile)
    try:
        yield count
    finally:
        sys.setprofile(previous)


def run_all(target: Path) -> list[tuple[tuple[str, ...], int]]:
    """Runs every fuzzed command on ``target`` in-process; asserts the contract; returns the exit codes."""
    from typer.testing import CliRunner

    app = fuzz_app()
    runner = CliRunner()
    codes = []
    pick = sum(len(p.name) + p.stat().st_size for p in target.iterdir()) % 2 if target.is_dir() else 0
    for cmd in (COMMANDS[pick], COMMANDS[2]):
        with call_budget() as calls:
            res = runner.invoke(app, [*cmd, str(target)])
        STATS["max_calls"] = max(STATS["max_calls"], calls[0])
        where = f"{' '.join(cmd)} exit {res.exit_code}: {res.output[-600:]!r}"
        assert res.exit_code in (0, 1, 2), where
        assert res.exception is None or isinstance(res.exception, SystemExit), (where, repr(res.exception))
        assert "Traceback" not in res.output, where
        assert "VHTOOL_DEBUG=1" not in res.stderr, where  # an unexpected exception, not a handled error
        if res.exit_code:
            assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, where
        if "--json" in cmd and res.stdout:
            json.loads(res.stdout)
        codes.append((cmd, res.exit_code))
        STATS["runs"] += 1
        STATS[f"exit{res.exit_code}"] += 1
    STATS["examples"] += 1
    return codes


def with_file(base: Path, name: str, content: bytes, check: Callable[[Path], Any] = run_all) -> Any:
    with tempfile.TemporaryDirectory(prefix="vhtool-fuzz-") as tmp:
        target = Path(tmp) / "ckpt"
        shutil.copytree(base, target, symlinks=True)
        (target / name).unlink(missing_ok=True)
        (target / name).write_bytes(content)
        return check(target)


FUZZ = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def fuzz_settings(kind: str) -> settings:
    return settings(FUZZ, max_examples=EXAMPLES[kind])


@fuzz_settings("header")
@given(raw=safetensors_file())
def test_fuzz_safetensors_header(bases: dict[str, Path], raw: bytes) -> None:
    with_file(bases["single"], "model.safetensors", raw)


@fuzz_settings("config")
@given(doc=config_docs, as_bytes=st.booleans() | st.none(), junk=st.binary(max_size=16))
def test_fuzz_config(bases: dict[str, Path], doc: Any, as_bytes: bool | None, junk: bytes) -> None:
    content = junk if as_bytes is None else json.dumps(doc).encode()
    with_file(bases["single"], "config.json", content)


@fuzz_settings("index")
@given(doc=index_docs)
def test_fuzz_index(bases: dict[str, Path], doc: Any) -> None:
    with_file(bases["sharded"], "model.safetensors.index.json", json.dumps(doc).encode())


@fuzz_settings("manifest")
@given(data=st.data())
def test_fuzz_manifest(bases: dict[str, Path], data: st.DataObject) -> None:
    base = json.loads((bases["single"] / "vhtool.json").read_text())
    doc = data.draw(_manifest_docs(base))
    with_file(bases["single"], "vhtool.json", json.dumps(doc).encode())


def test_fuzz_harness_sees_all_exit_codes(bases: dict[str, Path]) -> None:
    """The harness itself: an intact copy passes (0), a broken one fails (1), a non-checkpoint is refused (2)."""
    ok = with_file(bases["single"], "README.md", b"hi")
    assert {code for _, code in ok} == {0}
    broken = with_file(bases["single"], "config.json", b"[]")
    assert dict(broken)[("verify",)] == 1
    with tempfile.TemporaryDirectory() as tmp:
        assert {code for _, code in run_all(Path(tmp))} == {2}
        assert {code for _, code in run_all(Path(tmp) / "missing")} == {2}
    assert 0 < STATS["max_calls"] < CALL_BUDGET // 4  # the budget is far above what a real run needs


def test_fuzz_harness_stops_a_hang_without_a_clock(bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that never returns is stopped by the call budget, whatever the machine's load."""
    from vhtool.checkpoint import verify_op

    def step() -> None:
        pass

    def hang(*args: Any, **kwargs: Any) -> Any:
        while True:
            step()

    monkeypatch.setattr(verify_op, "verify_checkpoint", hang)
    with pytest.raises(WorkBudgetExceeded, match="more than"):
        with_file(bases["single"], "README.md", b"hi")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "vhtool.json", "model.safetensors.index.json"])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deeply_nested_json_is_a_clean_error(bases: dict[str, Path], name: str, opener: bytes) -> None:
    """JSON nested 100 000 deep overflows Python's parser (RecursionError): it must be a clean input error."""
    closer = b"]" if opener == b"[" else b"}"
    doc = opener * 100_000 + (b"" if opener == b"[" else b"1") + closer * 100_000
    content = struct.pack("<Q", len(doc)) + doc if name == "model.safetensors" else doc
    base = bases["sharded"] if name.endswith("index.json") else bases["single"]
    codes = dict(with_file(base, name, content))
    assert codes[("inspect-layers",)] == 2
    assert 1 in codes.values() or 2 in codes.values()
