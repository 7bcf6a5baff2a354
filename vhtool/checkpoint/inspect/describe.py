"""``inspect_checkpoint``: a checkpoint's tensors grouped and summed, with its value head, adapter and sharing.

The core never prints; the CLI renders the :class:`InspectResult` (or its JSON form).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vhtool.checkpoint.inspect.group import (
    LORA_RE,
    SCORE_RE,
    VALUE_HEAD_NAMES,
    classify,
    container_order,
    find_containers,
    group_row,
    natural_key,
    shared_names,
    tie_embeddings,
    token_embedding,
)
from vhtool.checkpoint.inspect.load import load
from vhtool.checkpoint.inspect.model import (
    KINDS,
    PART_ADAPTER,
    PART_MODEL,
    PART_SIDECAR,
    GroupRow,
    InspectResult,
    Loaded,
    Tensor,
    TensorRow,
    Totals,
)
from vhtool.checkpoint.inspect.value_head import value_head_report
from vhtool.checkpoint.layout import hidden_size
from vhtool.checkpoint.manifest import Manifest, ReferenceInfo
from vhtool.errors import InputError

_KIND_RANK = {k: i for i, k in enumerate(KINDS)}


def inspect_checkpoint(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    filter_glob: str | None = None,
    token: str | bool | None = None,
    allow_pickle: bool = False,
) -> InspectResult:
    """Describes a checkpoint from its headers: grouped tensors, totals, value head, reward adapter, sharing.

    Args:
        source: a local checkpoint directory, ``builtin:NAME`` or a Hub repo id. A path that exists is
            never sent to the Hub.
        revision: Hub revision (branch, tag or commit); refused for local paths.
        filter_glob: keep only tensors whose name matches this ``fnmatch`` pattern (groups and totals
            are computed over those); the value-head and adapter reports always see every tensor.
        token: Hub token (default: the usual Hugging Face sources).
        allow_pickle: read a local pickle-only checkpoint (``pytorch_model.bin``) with torch's weights-only loader
            (the one path that imports torch); without it such a folder is refused with a message naming the flag.

    Raises:
        InputError: not a checkpoint, a missing path, an invalid Hub id or revision.
        CheckpointError: a malformed header, index or JSON file.
        HubUnavailableError: a Hub id that cannot be reached (offline and not cached, no such repo).
    """
    loaded = load(str(source), revision=revision, token=token, allow_pickle=allow_pickle)
    return describe(loaded, filter_glob=filter_glob)


@dataclass(frozen=True)
class _Row:
    """A tensor placed in its group, before the table is built."""

    order: tuple[Any, ...]
    group: str
    kind: str
    container: str | None
    index: int | None
    tensor: Tensor
    marks: tuple[str, ...]


def describe(loaded: Loaded, *, filter_glob: str | None) -> InspectResult:
    """Builds the report of tensors already read (local or remote) — the part shared by every source."""
    ckpt = loaded.ckpt
    config = ckpt.config
    manifest = ckpt.manifest
    model_names = [t.name for t in loaded.tensors if t.part == PART_MODEL and t.name not in VALUE_HEAD_NAMES]
    containers = find_containers(model_names)
    role = manifest.role if manifest is not None else None
    frozen = role == "reference"
    shared, shared_note = shared_names(manifest, model_names) if frozen else (set(), None)
    if shared_note:
        loaded.notes.append(shared_note)

    rows = [_place(t, containers, shared=shared, frozen=frozen) for t in loaded.tensors]
    tied = tie_embeddings(config) and not any(r.kind == "lm_head" for r in rows)
    tied_name = token_embedding([r.tensor for r in rows if r.kind == "embeddings"], config) if tied else None
    if filter_glob is not None:
        rows = [r for r in rows if fnmatch.fnmatchcase(r.tensor.name, filter_glob)]
    rows.sort(key=lambda r: (r.order, natural_key(r.tensor.name)))
    tensor_rows = [_tensor_row(r, tied_name) for r in rows]
    groups = _groups(rows, tensor_rows, loaded.adapter.name if loaded.adapter else "")
    if tied and filter_glob is None:
        groups.append(((_KIND_RANK["lm_head"],), _TIED_LM_HEAD))
    groups.sort(key=lambda g: g[0])

    try:
        hidden: int | None = hidden_size(config)
    except InputError:
        hidden = None
    return InspectResult(
        source=loaded.source,
        model=_model_summary(config, hidden),
        role=role,
        layout=loaded.layout,
        files=_files(loaded.tensors),
        filter=filter_glob,
        containers=tuple(sorted(containers.items(), key=lambda c: container_order(c[0]))),
        groups=tuple(g for _, g in groups),
        tensors=tuple(tensor_rows),
        totals=_totals(tensor_rows),
        value_head=value_head_report(ckpt, hidden),
        reward_adapter=loaded.adapter,
        reference=_reference(manifest, shared) if frozen else None,
        notes=tuple(loaded.notes),
    )


def _place(t: Tensor, containers: Mapping[str, int], *, shared: set[str], frozen: bool) -> _Row:
    """The group, sort order and marks of one tensor."""
    kind, container, index = classify(t, containers)
    marks: list[str] = []
    if t.part == PART_MODEL:
        if t.name in shared:
            marks.append("shared")
        if frozen:
            marks.append("frozen")
    if LORA_RE.search(t.name):
        marks.append("lora")
    elif t.part == PART_ADAPTER and SCORE_RE.search(t.name):
        marks.append("score")
    if t.part == PART_SIDECAR:
        marks.append("sidecar")
    if kind == "block":
        assert container is not None and index is not None
        gid = f"block:{container}.{index}"
        order: tuple[Any, ...] = (_KIND_RANK[kind], container_order(container), index)
    elif kind == "reward_adapter":
        sub = "lora" if "lora" in marks else ("score" if "score" in marks else "other")
        gid = f"reward_adapter:{sub}"
        order = (_KIND_RANK[kind], ("lora", "score", "other").index(sub))
    else:
        gid = kind
        order = (_KIND_RANK[kind],)
    return _Row(order, gid, kind, container, index, t, tuple(marks))


def _tensor_row(r: _Row, tied_name: str | None) -> TensorRow:
    t = r.tensor
    marks = (*r.marks, "tied") if t.name == tied_name and t.part == PART_MODEL else r.marks
    return TensorRow(
        name=t.name,
        shape=t.info.shape,
        dtype=t.info.dtype,
        params=t.info.numel,
        nbytes=t.info.nbytes,
        file=t.file,
        part=t.part,
        group=r.group,
        marks=marks,
    )


def _groups(
    rows: list[_Row], tensor_rows: list[TensorRow], adapter_name: str
) -> list[tuple[tuple[Any, ...], GroupRow]]:
    """One row per group, in first-seen order, with the sort key of its first member."""
    members: dict[str, list[tuple[_Row, TensorRow]]] = {}
    for r, tr in zip(rows, tensor_rows, strict=True):
        members.setdefault(r.group, []).append((r, tr))
    out: list[tuple[tuple[Any, ...], GroupRow]] = []
    for gid, pairs in members.items():
        first = pairs[0][0]
        trs = [tr for _, tr in pairs]
        out.append((first.order, group_row(gid, first.kind, first.container, first.index, trs, adapter_name)))
    return out


_TIED_LM_HEAD = GroupRow(
    id="lm_head",
    kind="lm_head",
    label="LM head (tied to embeddings)",
    container=None,
    index=None,
    tensors=0,
    params=0,
    nbytes=0,
    dtypes=(),
    marks=("tied",),
)


def _totals(tensor_rows: list[TensorRow]) -> Totals:
    by_dtype: dict[str, tuple[int, int, int]] = {}
    for tr in tensor_rows:
        n, p, b = by_dtype.get(tr.dtype, (0, 0, 0))
        by_dtype[tr.dtype] = (n + 1, p + tr.params, b + tr.nbytes)
    return Totals(
        tensors=len(tensor_rows),
        params=sum(t.params for t in tensor_rows),
        nbytes=sum(t.nbytes for t in tensor_rows),
        by_dtype=by_dtype,
    )


def _files(tensors: list[Tensor]) -> tuple[dict[str, Any], ...]:
    files: dict[str, dict[str, Any]] = {}
    for t in tensors:
        f = files.setdefault(t.file, {"name": t.file, "part": t.part, "tensors": 0, "bytes": 0})
        f["tensors"] += 1
        f["bytes"] += t.info.nbytes
    return tuple(sorted(files.values(), key=lambda f: (f["part"] != PART_MODEL, f["name"])))


def _reference(manifest: Manifest | None, shared: set[str]) -> dict[str, Any]:
    ref = manifest.reference if manifest is not None else None
    if ref is None:
        ref = ReferenceInfo()
    return {
        "shared_layers": ref.shared_layers,
        "pattern": ref.pattern,
        "num_blocks": ref.num_blocks,
        "shared_tensors": len(shared),
    }


def _model_summary(config: Mapping[str, Any], hidden: int | None) -> dict[str, Any]:
    return {
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "is_encoder_decoder": bool(config.get("is_encoder_decoder", False)),
        "hidden_size": hidden,
        "tie_word_embeddings": tie_embeddings(config),
    }
