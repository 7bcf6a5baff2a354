"""``vhtool inspect-layers``: what a checkpoint holds, from its safetensors headers only. No torch.

A checkpoint (a local directory, a ``builtin:`` model, or a Hub repo read through HTTP range
requests by :mod:`vhtool.hub`) is described by its config, ``vhtool.json`` and the headers of its
weight files, its ``value_head.safetensors`` sidecar and its reward-adapter subfolder. Tensors are
grouped the way a reader thinks of a model: embeddings, one row per block, final norm, LM head,
value head, reward adapter, other. Nothing here reads tensor data, except :func:`diff_checkpoints`
with ``hash=True``, which hashes byte ranges shard by shard in bounded memory.

Modules: ``model`` (result types and the JSON schema), ``load`` / ``local`` / ``remote`` (reading),
``group`` (grouping heuristics), ``adapter`` and ``value_head`` (their reports), ``describe``
(``inspect_checkpoint``), ``diff`` (``diff_checkpoints`` and hashing).
"""

from __future__ import annotations

from vhtool.checkpoint.inspect.describe import inspect_checkpoint
from vhtool.checkpoint.inspect.diff import diff_checkpoints
from vhtool.checkpoint.inspect.group import find_containers
from vhtool.checkpoint.inspect.model import (
    SCHEMA_VERSION,
    AdapterReport,
    DiffResult,
    GroupRow,
    InspectResult,
    SourceInfo,
    TensorRow,
    Totals,
    ValueHeadReport,
)

__all__ = [
    "SCHEMA_VERSION",
    "AdapterReport",
    "DiffResult",
    "GroupRow",
    "InspectResult",
    "SourceInfo",
    "TensorRow",
    "Totals",
    "ValueHeadReport",
    "diff_checkpoints",
    "find_containers",
    "inspect_checkpoint",
]
