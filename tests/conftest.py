"""Shared fixtures: an offline, cache-free environment and tiny random models of several architectures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Set before anything imports huggingface_hub, which reads these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    from tests.hub_fixtures import hub_server  # noqa: E402,F401  (the loopback Hub fixture)
except ImportError:  # pragma: no cover - only while the Hub server is being written
    pass

CAUSAL_ARCHS = ("gpt2", "opt", "gpt-neo", "gpt-neox", "llama", "qwen2")
SEQ2SEQ_ARCHS = ("t5", "bart")
VOCAB = 128


def tiny_config(arch: str, **overrides: Any) -> Any:
    """A tiny transformers config of ``arch`` (hidden 32 unless overridden)."""
    import transformers as tf

    h = overrides.pop("hidden", 32)
    layers = overrides.pop("layers", 2)
    common: dict[str, Any] = {"vocab_size": VOCAB}
    if arch == "gpt2":
        cfg = tf.GPT2Config(
            n_layer=layers, n_embd=h, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0, **common
        )
    elif arch == "opt":
        cfg = tf.OPTConfig(
            hidden_size=h,
            ffn_dim=2 * h,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=128,
            word_embed_proj_dim=h // 2,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
            **common,
        )
    elif arch == "gpt-neo":
        cfg = tf.GPTNeoConfig(
            hidden_size=h,
            num_layers=layers,
            num_heads=4,
            attention_types=[[["global", "local"], layers // 2 or 1]],
            max_position_embeddings=128,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
        if layers % 2:
            cfg.attention_layers = cfg.attention_layers[:layers]
    elif arch == "gpt-neox":
        cfg = tf.GPTNeoXConfig(
            hidden_size=h,
            intermediate_size=2 * h,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=128,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
    elif arch == "llama":
        cfg = tf.LlamaConfig(
            hidden_size=h,
            intermediate_size=2 * h,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
            **common,
        )
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(
            hidden_size=h,
            intermediate_size=2 * h,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
            **common,
        )
    elif arch == "t5":
        cfg = tf.T5Config(
            d_model=h,
            d_ff=2 * h,
            num_layers=layers,
            num_heads=4,
            d_kv=h // 4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
            relative_attention_num_buckets=8,
            **common,
        )
    elif arch == "bart":
        cfg = tf.BartConfig(
            d_model=h,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=2 * h,
            decoder_ffn_dim=2 * h,
            max_position_embeddings=128,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            forced_eos_token_id=2,
            **common,
        )
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def build_tiny(arch: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny random model of ``arch`` in eval mode, deterministic for a seed."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    cls = tf.AutoModelForSeq2SeqLM if arch in SEQ2SEQ_ARCHS else tf.AutoModelForCausalLM
    return cls.from_config(cfg).eval()


@pytest.fixture(autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
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


@pytest.fixture
def cli() -> Iterator[Callable[..., Any]]:
    """Runs the Typer app in-process: ``cli("init", "x", "-o", "y")`` -> result with exit_code/stdout/stderr."""
    from typer.testing import CliRunner

    from vhtool.cli.app import app

    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, [str(a) for a in args], input=input)

    yield run
