"""Synthetic Llama checkpoints written tensor by tensor (constant memory), for tests and benchmarks.

* ``make_llama(dir, preset="1b")``: TinyLlama-1.1B shapes, bf16, 3 shards, random normal data
  (std 0.02), a real config.json; about 2.2 GB on disk.
* ``make_llama(dir, preset="70b", sparse=True)``: Llama-2-70B shapes, bf16, 30 shards, real
  headers and *sparse* data regions (holes): about 140 GB apparent size, almost no disk used.
* ``preset`` may also be a dict of the same keys (``hidden``, ``intermediate``, ``layers``, ``heads``,
  ``kv_heads``, ``vocab``, ``shards``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vhtool.checkpoint.safetensors_io import build_header

PRESETS = {
    "1b": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000, shards=3),
    "70b": dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=32000, shards=30),
    "tiny": dict(hidden=256, intermediate=688, layers=4, heads=8, kv_heads=4, vocab=32000, shards=2),
}


def llama_tensors(p: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    h, i, kv = p["hidden"], p["intermediate"], p["hidden"] // p["heads"] * p["kv_heads"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (p["vocab"], h))]
    for layer in range(p["layers"]):
        pre = f"model.layers.{layer}"
        out += [
            (f"{pre}.input_layernorm.weight", (h,)),
            (f"{pre}.self_attn.q_proj.weight", (h, h)),
            (f"{pre}.self_attn.k_proj.weight", (kv, h)),
            (f"{pre}.self_attn.v_proj.weight", (kv, h)),
            (f"{pre}.self_attn.o_proj.weight", (h, h)),
            (f"{pre}.post_attention_layernorm.weight", (h,)),
            (f"{pre}.mlp.gate_proj.weight", (i, h)),
            (f"{pre}.mlp.up_proj.weight", (i, h)),
            (f"{pre}.mlp.down_proj.weight", (h, i)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (p["vocab"], h))]
    return out


def _bf16_bytes(rng: np.random.Generator, shape: tuple[int, ...], norm: bool) -> bytes:
    n = int(np.prod(shape))
    if norm:
        f = np.ones(n, dtype=np.float32)
    else:
        f = (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(np.float32)
    return (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def make_llama(directory: Path, preset: str | dict[str, int] = "1b", *, sparse: bool = False, seed: int = 0) -> Path:
    """Writes a Llama checkpoint of ``preset`` shapes into ``directory`` (skipped when already complete)."""
    directory = Path(directory)
    done = directory / ".complete"
    if done.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    p = PRESETS[preset] if isinstance(preset, str) else preset
    tensors = llama_tensors(p)
    per_shard = -(-len(tensors) // p["shards"])
    groups = [tensors[k : k + per_shard] for k in range(0, len(tensors), per_shard)]
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for si, group in enumerate(groups, 1):
        name = f"model-{si:05d}-of-{len(groups):05d}.safetensors"
        items = [(n, "BF16", s, int(np.prod(s)) * 2) for n, s in group]
        header, _ = build_header(items, {"format": "pt"})
        size = len(header) + sum(x[3] for x in items)
        with open(directory / name, "wb") as fh:
            fh.write(header)
            if sparse:
                fh.truncate(size)
            else:
                for n, s in group:
                    fh.write(_bf16_bytes(rng, s, norm=n.endswith("norm.weight")))
        for n, _s in group:
            weight_map[n] = name
        total += sum(x[3] for x in items)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p["hidden"],
        "intermediate_size": p["intermediate"],
        "num_hidden_layers": p["layers"],
        "num_attention_heads": p["heads"],
        "num_key_value_heads": p["kv_heads"],
        "vocab_size": p["vocab"],
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    done.write_text("ok")
    return directory
