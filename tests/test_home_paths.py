"""``~`` in path arguments and options (issue 20, point 11).

A shell expands ``~`` only at the start of a word: ``--output=~/x`` or a quoted ``"~/x"`` reach vhtool as
they are. vhtool used to take them literally (a directory called ``~`` in the current directory, or an error
suggesting ``mkdir -p …/~``). Every path argument and option of every command is now expanded, in one place
(:class:`vhtool.cli.common.VhtoolCommand`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer.main

from vhtool.cli.app import app
from vhtool.cli.common import expand_home, names_a_path

#: Every metavar of a value-taking parameter that is NOT a path, so never expanded. A new parameter must be
#: classified: a path (a metavar in PATH_METAVARS, or a ``Path`` type) or one of these.
NOT_PATHS = {
    "TEXT",
    "HOST",  # serve
    "PORT",
    "KEY",
    "MS",
    "SPLIT",  # evaluate
    "X",
    "P",
    "GLOB",
    "PATTERN",
    "NAME",
    "N",
    "ID",
    "REV",
    "BRANCH",
    "TOKEN",
    "REPO_ID",
    "CAPS",
    "SECONDS",
    "STD",
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME is a fresh directory; the current directory is another one (so a literal ``~`` would show there)."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return home


def _work(home: Path) -> Path:
    return home.parent / "work"


def test_init_output_equals_tilde_writes_under_home(cli: Callable[..., Any], home: Path) -> None:
    res = cli("init", "builtin:tiny-gpt2", "--output=~/x")
    assert res.exit_code == 0, res.output
    assert (home / "x" / "model.safetensors").is_file()
    assert list(_work(home).iterdir()) == []  # no directory called "~" here


def test_short_output_option_and_quoted_tilde(cli: Callable[..., Any], home: Path) -> None:
    res = cli("init", "builtin:tiny-gpt2", "-o", "~/y")  # what a quoted "~/y" passes on
    assert res.exit_code == 0, res.output
    assert (home / "y" / "vhtool.json").is_file()


def test_missing_parent_error_names_the_expanded_path(cli: Callable[..., Any], home: Path) -> None:
    res = cli("init", "builtin:tiny-gpt2", "--output=~/no/such/x")
    assert res.exit_code == 2
    assert f"mkdir -p {home / 'no' / 'such'}" in res.stderr and "/~" not in res.stderr
    assert list(_work(home).iterdir()) == [] and sorted(p.name for p in home.iterdir()) == []


def test_score_reads_and_writes_tilde_paths(
    cli: Callable[..., Any], home: Path, initialised: Callable[..., Path]
) -> None:
    (home / "data.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    ckpt = initialised("builtin:tiny-gpt2")
    res = cli("score", ckpt, "-i", "~/data.jsonl", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["index"] for line in res.stdout.splitlines()] == [0, 1]
    res = cli("score", ckpt, "--input=~/data.jsonl", "--output=~/scores.jsonl", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert len((home / "scores.jsonl").read_text().splitlines()) == 2
    assert list(_work(home).iterdir()) == []


def test_checkpoint_arguments_expand(cli: Callable[..., Any], home: Path) -> None:
    assert cli("init", "builtin:tiny-gpt2", "--output=~/vh").exit_code == 0
    for args in (
        ("verify", "~/vh"),
        ("inspect-layers", "~/vh", "--json"),
        ("inspect-layers", "~/vh", "--diff=~/vh", "--json"),
        ("push", "~/vh", "me/vh", "--dry-run", "--json"),
    ):
        res = cli(*args)
        assert res.exit_code == 0, (args, res.output)
    res = cli("convert", "~/vh", "--to", "sidecar", "--output=~/vh-sidecar")
    assert res.exit_code == 0, res.output
    assert (home / "vh-sidecar" / "vhtool.json").is_file()


def test_every_value_taking_parameter_is_classified() -> None:
    """Path parameters are expanded by the shared command class; every other one is listed here as not a path."""
    group = typer.main.get_command(app)
    seen_paths: set[tuple[str, str]] = set()
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            metavar = getattr(param, "metavar", None)
            if getattr(param, "is_flag", False) or metavar is None:
                continue  # a flag or a choice: no free value, nothing to expand
            if names_a_path(param):
                seen_paths.add((name, param.name))
            else:
                assert metavar in NOT_PATHS, f"{name} {param.name} ({metavar}): a path or not? classify it"
    assert {("init", "model"), ("init", "output"), ("score", "input_file"), ("score", "output")} <= seen_paths
    assert {("score", "offload_folder"), ("push", "checkpoint"), ("inspect-layers", "diff")} <= seen_paths


def test_expand_home_keeps_types_and_leaves_other_values(home: Path) -> None:
    assert expand_home("~/a") == f"{home}/a"
    assert expand_home(Path("~/a")) == home / "a"
    assert expand_home(("~/a", "b")) == (f"{home}/a", "b")
    for value in ("builtin:tiny-gpt2", "org/model", "-", "./~x", None, 3):
        assert expand_home(value) == value
