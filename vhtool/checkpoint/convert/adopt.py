"""Adoption: ``convert SRC --to vhtool`` (or ``sidecar``) when SRC already follows it but has no ``vhtool.json``.

That is what ``save_pretrained`` of vhtool's or TRL's value-head classes writes after training. Converting
to the convention SRC is already in would otherwise have nothing to do; instead its files are copied
unchanged (the trained head bit for bit, data moved by the kernel) into OUT, with a ``vhtool.json`` that
records every weight file's sha256 and where the checkpoint came from (``adopted``). No model is loaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from vhtool.checkpoint.atomic import atomic_output_dir
from vhtool.checkpoint.conventions import Detected
from vhtool.checkpoint.copyio import FileRecord, Progress, place_file
from vhtool.checkpoint.init_op import architecture_of, copy_aux_files
from vhtool.checkpoint.layout import INDEX_FILE, SIDECAR_FILE, Checkpoint, safe_member
from vhtool.checkpoint.manifest import files_section, write_manifest
from vhtool.checkpoint.unmanaged import adopted_manifest


def adopt_checkpoint(
    ckpt: Checkpoint,
    det: Detected,
    out: Path,
    *,
    force: bool,
    durable: bool,
    progress_factory: Callable[[int], Progress] | None,
) -> tuple[list[FileRecord], str, list[str]]:
    """Copies ``ckpt`` unchanged into ``out`` and writes its manifest; returns the records, layout and notes."""
    names = list(ckpt.weight_files) + ([SIDECAR_FILE] if det.convention == "sidecar" else [])
    total = sum(ckpt.path.joinpath(n).stat().st_size for n in names)
    progress = progress_factory(total) if progress_factory else None
    notes = [f"adopted {ckpt.path}: files copied unchanged (the value head bit for bit), {len(names)} hashed"]
    if ckpt.ignored_weights:
        notes.append(f"left out {', '.join(ckpt.ignored_weights)} (stale: loaders read model.safetensors)")
    with atomic_output_dir(out, force=force, durable=durable, inputs=[ckpt.path]) as tmp:
        copy_aux_files(ckpt.path, tmp)
        records = [
            place_file(ckpt.weight_path(n), tmp / n, mode="auto", name=n, want_hash=True, progress=progress)
            for n in names
        ]
        layout = "single-file"
        if ckpt.sharded:
            layout = "sharded"
            shutil.copyfile(safe_member(ckpt.path, INDEX_FILE, "the index"), tmp / INDEX_FILE)
        hidden = det.head.shape[-1]
        manifest = adopted_manifest(
            ckpt.path,
            kind="save_pretrained",
            by="vhtool convert",
            architecture=architecture_of(ckpt.config, ckpt.path),
            head_file=det.head.file,
            files=files_section(records),
            hidden=hidden,
            head_dtype=det.head.dtype,
            convention=det.convention,
            model_dtype=ckpt.dominant_dtype(),
            layout=layout,
        )
        write_manifest(tmp, manifest)
    return records, layout, notes


__all__ = ["adopt_checkpoint"]
