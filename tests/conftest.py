"""Shared fixtures: an offline, cache-free environment and tiny random models of several architectures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Set before anything imports huggingface_hub, which reads these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers import CAUSAL_ARCHS, SEQ2SEQ_ARCHS, VOCAB, build_tiny, tiny_config  # noqa: E402,F401
from tests.hub_fixtures import hub_server  # noqa: E402,F401  (the loopback Hub fixture, registered once here)


@pytest.fixture(autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)  # the client's default path, as on the real Hub
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("VHTOOL_DEBUG", raising=False)


_SAVED: dict[tuple[Any, ...], Path] = {}


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``saved_model(arch, sharded=False, **overrides)`` -> a directory written by ``save_pretrained`` (cached)."""

    def make(arch: str, sharded: bool = False, **overrides: Any) -> Path:
        key = (arch, sharded, tuple(sorted(overrides.items())))
        if key not in _SAVED:
            model = build_tiny(arch, **overrides)
            d = tmp_path_factory.mktemp(f"{arch}-{'sharded' if sharded else 'single'}")
            kwargs = {"max_shard_size": "20KB"} if sharded else {}
            model.save_pretrained(d, **kwargs)
            _SAVED[key] = d
        return _SAVED[key]

    return make


_INITIALISED: dict[tuple[Any, ...], Path] = {}


@pytest.fixture(scope="session")
def initialised(saved_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``initialised(model, sharded=False, init="random", seed=0, link="auto")`` -> a policy made by ``vhtool init``.

    ``model`` is an architecture of :func:`tests.helpers.tiny_config` (saved by ``save_pretrained``, single
    file or sharded) or a ``builtin:`` name. Cached for the whole session and shared by every test module:
    copy it before changing anything in it.
    """
    from vhtool.checkpoint.init_op import HeadSpec, init_checkpoint
    from vhtool.hub import resolve_source

    def make(model: str, *, sharded: bool = False, init: str = "random", seed: int = 0, link: str = "auto") -> Path:
        key = (model, sharded, init, seed, link)
        if key not in _INITIALISED:
            src = resolve_source(model if model.startswith("builtin:") else str(saved_model(model, sharded=sharded)))
            path, record = src.path, src.record()  # what the CLI records
            out = tmp_path_factory.mktemp("initialised") / f"{model.replace('builtin:', '')}-vh"
            init_checkpoint(path, out, head=HeadSpec(init, seed=seed), source=record, link=link, durable=False)
            _INITIALISED[key] = out
        return _INITIALISED[key]

    return make


@pytest.fixture
def cli() -> Iterator[Callable[..., Any]]:
    """Runs the Typer app in-process: ``cli("init", "x", "-o", "y")`` -> result with exit_code/stdout/stderr."""
    from typer.testing import CliRunner

    from vhtool.cli.app import app

    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, [str(a) for a in args], input=input)

    yield run
