"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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
