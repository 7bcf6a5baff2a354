"""Writing the converted weight files: unchanged files copied whole, changed ones rewritten by byte ranges."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vhtool.checkpoint.catalogue import HEAD_SHARD, INDEX_FILE, SIDECAR_FILE, SINGLE_FILE
from vhtool.checkpoint.conventions import Detected
from vhtool.checkpoint.copyio import FileRecord, Progress, place_file
from vhtool.checkpoint.layout import Checkpoint
from vhtool.checkpoint.safetensors_io import SafetensorsHeader, TensorInfo
from vhtool.checkpoint.writer import PlannedTensor, RangeSource, write_safetensors


def tensor_range(path: Path, hdr: SafetensorsHeader, info: TensorInfo) -> RangeSource:
    return RangeSource(path, hdr.data_start + info.begin, info.nbytes)


@dataclass(frozen=True)
class HeadSource:
    """Where the source head's tensors live: header, path, and whether inline among the weights."""

    hdr: SafetensorsHeader
    path: Path
    inline: bool


def head_source(ckpt: Checkpoint, det: Detected) -> HeadSource:
    if det.convention == "sidecar":
        assert ckpt.sidecar is not None
        return HeadSource(ckpt.sidecar, ckpt.path / SIDECAR_FILE, inline=False)
    return HeadSource(ckpt.headers[det.head.file], ckpt.path / det.head.file, inline=True)


def source_header(ckpt: Checkpoint, hs: HeadSource, name: str) -> tuple[SafetensorsHeader, TensorInfo]:
    if hs.inline:
        loc = ckpt.tensors[name]
        return ckpt.headers[loc.file], loc.info
    return hs.hdr, hs.hdr.tensors[name]


def source_tensor(ckpt: Checkpoint, hs: HeadSource, name: str) -> tuple[TensorInfo, RangeSource]:
    hdr, info = source_header(ckpt, hs, name)
    return info, tensor_range(hdr.path, hdr, info)


def write_weights(
    ckpt: Checkpoint,
    tmp: Path,
    *,
    head_out: list[PlannedTensor],
    head_inline_at: str | None,
    src_head_names: set[str],
    drop: set[str],
    to_sidecar: bool,
    progress: Progress | None,
) -> tuple[list[FileRecord], dict[str, tuple[str, int]], str]:
    """Writes the weight files: unchanged ones copied whole, changed ones rewritten by byte ranges.

    The head goes where the source kept it (renamed in place); a head coming from a sidecar goes at the
    end of ``model.safetensors`` (single file) or into its own shard (sharded); nowhere when ``to_sidecar``.
    """
    records: list[FileRecord] = []
    placed: dict[str, tuple[str, int]] = {}
    head_file = ""
    append_single = head_inline_at is None and not to_sidecar and not ckpt.sharded
    for file in ckpt.weight_files:
        hdr = ckpt.headers[file]
        path = ckpt.path / file
        items: list[PlannedTensor] = []
        changed = False
        for t in sorted(hdr.tensors.values(), key=lambda t: t.begin):
            if t.name in src_head_names:
                changed = True
                if t.name == head_inline_at and not to_sidecar:
                    items.extend(head_out)
                    head_file = file
                continue
            if t.name in drop:
                changed = True
                continue
            items.append(PlannedTensor(t.name, t.dtype, t.shape, tensor_range(path, hdr, t)))
        if append_single and file == SINGLE_FILE:
            items.extend(head_out)
            head_file = file
            changed = True
        if not items:
            if progress:
                progress(hdr.file_size)
            continue  # a shard that held only dropped tensors (e.g. the LM head)
        if changed:
            rec = write_safetensors(tmp / file, items, metadata=hdr.metadata, name=file, progress=progress)
            if progress:
                progress(hdr.file_size - sum(t.nbytes for t in items if isinstance(t.data, RangeSource)))
        else:
            rec = place_file(path, tmp / file, mode="auto", name=file, want_hash=True, progress=progress)
        records.append(rec)
        placed.update({t.name: (file, t.nbytes) for t in items})
    if head_inline_at is None and not to_sidecar and ckpt.sharded:
        records.append(write_safetensors(tmp / HEAD_SHARD, head_out, metadata={"format": "pt"}, name=HEAD_SHARD))
        placed.update({t.name: (HEAD_SHARD, t.nbytes) for t in head_out})
        head_file = HEAD_SHARD
    if head_inline_at is None and not to_sidecar and progress:
        progress(sum(t.nbytes for t in head_out))
    return records, placed, head_file


def write_index(tmp: Path, ckpt: Checkpoint, weight_map: Mapping[str, tuple[str, int]]) -> None:
    """Writes the safetensors index of a sharded output: the source's metadata, the new total size and map."""
    meta = dict((ckpt.index or {}).get("metadata") or {})
    meta["total_size"] = sum(n for _, n in weight_map.values())
    index = {"metadata": meta, "weight_map": {k: weight_map[k][0] for k in sorted(weight_map)}}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
