"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from vhtool.checkpoint.safetensors_io import build_header


def tree_bytes(root: Path) -> dict[str, str]:
    """relpath -> sha256 of every file (and ``-> target`` of every link) under ``root``, ``.git`` included."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def make_reward_adapter(directory: Path, preset: dict[str, int]) -> Path:
    """A real PEFT LoRA adapter of a 1-label Llama sequence classifier with ``preset``'s widths (small vocab)."""
    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    cfg = tf.LlamaConfig(
        hidden_size=preset["hidden"],
        intermediate_size=preset["intermediate"],
        num_hidden_layers=preset["layers"],
        num_attention_heads=preset["heads"],
        num_key_value_heads=preset["kv_heads"],
        vocab_size=64,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = get_peft_model(
        tf.LlamaForSequenceClassification(cfg),
        LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"]),
    )
    model.save_pretrained(directory)
    return directory


#: The widths of ``builtin:tiny-llama`` (for a reward adapter that fits it).
TINY_LLAMA_PRESET = dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)


def json_error(stdout: str, exit_code: int) -> dict[str, object]:
    """Asserts that ``stdout`` is exactly one ``--json`` failure object with ``exit_code``; returns its error."""
    import json

    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    doc = json.loads(lines[0])
    assert doc["exit_code"] == exit_code and set(doc["error"]) >= {"type", "message"}, doc
    return dict(doc["error"])


# ----------------------------------------------------------------------------------------- tiny models

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


# --------------------------------------------------------------- hand-written safetensors (verify, fuzz)

TINY_CONFIG = {"model_type": "gpt2", "n_embd": 4, "vocab_size": 8, "architectures": ["GPT2LMHeadModel"]}


def write_safetensors_raw(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """A well-formed safetensors file of ``name -> (dtype, shape, data)`` (data in the given order)."""
    header, _ = build_header([(n, d, s, len(b)) for n, (d, s, b) in tensors.items()], {"format": "pt"})
    path.write_bytes(header + b"".join(b for _, _, b in tensors.values()))


def write_header_doc(path: Path, doc: Any, data: bytes = b"", *, declared: int | None = None) -> None:
    """A safetensors file with an arbitrary JSON header ``doc`` (or raw bytes) and length prefix ``declared``."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    n = len(body) if declared is None else declared
    path.write_bytes(struct.pack("<Q", n) + body + data)


def make_tiny_source(directory: Path, *, head: np.ndarray | None = None) -> Path:
    """A minimal checkpoint by hand: config.json and model.safetensors (an 8x4 embedding, optionally a value head)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG))
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {
        "transformer.wte.weight": ("F32", (8, 4), np.arange(32, dtype="<f4").tobytes())
    }
    if head is not None:
        tensors["v_head.summary.weight"] = ("F32", (1, 4), head.astype("<f4").tobytes())
        tensors["v_head.summary.bias"] = ("F32", (1,), np.zeros(1, "<f4").tobytes())
    write_safetensors_raw(directory / "model.safetensors", tensors)
    return directory
