"""``vhtool attach-reward-adapter``: a policy checkpoint plus a LoRA (or other PEFT) reward adapter, from files.

The adapter is checked by :mod:`vhtool.checkpoint.adapter` (config and headers only). The policy's
weight files are placed like ``init`` places them (reflink, copy, hard link or symlink) and the adapter
is copied into a subfolder recorded in ``vhtool.json`` under ``reward_adapter``.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.adapter import AdapterInfo, adapter_member, check_fit, inspect_adapter, policy_tensor_shapes
from vhtool.checkpoint.atomic import atomic_output_dir
from vhtool.checkpoint.catalogue import CARD_FILE, adapter_copies
from vhtool.checkpoint.conventions import find_heads
from vhtool.checkpoint.copyio import LINK_MODES, FileRecord, Progress, hash_file
from vhtool.checkpoint.init_op import copy_aux_files, place_weight_files
from vhtool.checkpoint.layout import INDEX_FILE, MANIFEST_FILE, SIDECAR_FILE, open_checkpoint, safe_member
from vhtool.checkpoint.manifest import (
    FileEntry,
    Manifest,
    RewardAdapterInfo,
    SourceInfo,
    files_section,
    write_manifest,
)
from vhtool.checkpoint.names import ADAPTER_PICKLE, ADAPTER_WEIGHTS, DEFAULT_ADAPTER_NAME
from vhtool.checkpoint.target import check_output_target
from vhtool.errors import CheckpointError, InputError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class AttachResult:
    """What ``attach-reward-adapter`` wrote."""

    out: Path
    adapter_name: str
    adapter_source: dict[str, Any]
    peft_type: str
    score_shape: tuple[int, ...]
    target_modules: list[str] | str | None
    adapted_modules: int
    files: list[FileRecord]
    adapter_files: Mapping[str, FileEntry]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "reward_adapter": {
                "name": self.adapter_name,
                "subfolder": self.adapter_name,
                "source": self.adapter_source,
                "peft_type": self.peft_type,
                "score_shape": list(self.score_shape),
                "target_modules": self.target_modules,
                "adapted_modules": self.adapted_modules,
                "files": {name: entry.to_json() for name, entry in self.adapter_files.items()},
            },
            "files": [f.to_json() for f in self.files],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def _check_adapter_name(name: str) -> None:
    if not _SAFE_NAME.match(name) or name in ("default",):
        raise InputError(
            f"--adapter-name {name!r}: use letters, digits, '.', '_' or '-' (not 'default', the name PEFT gives "
            "the policy's own adapter)."
        )


def attach_reward_adapter(
    policy: Path,
    adapter: Path,
    out: Path,
    *,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    adapter_source: dict[str, Any] | None = None,
    link: str = "auto",
    force: bool = False,
    allow_pickle: bool = False,
    want_hash: bool = False,
    progress_factory: Callable[[int], Progress] | None = None,
    durable: bool = True,
) -> AttachResult:
    """Writes OUT = ``policy``'s files + ``adapter`` in the subfolder ``adapter_name`` + the ``vhtool.json`` entry.

    The policy must be a value-head checkpoint (``vhtool init`` output, or a TRL-saved checkpoint with
    ``v_head.*`` weights); its ``vhtool.json`` is kept and gains ``reward_adapter`` (one is created for a
    checkpoint that has none). Everything is validated before anything is written.

    Args:
        policy: the local policy checkpoint directory.
        adapter: the local adapter directory (already downloaded when it came from the Hub).
        out: the output directory.
        adapter_name: the PEFT adapter name and the subfolder it is stored in.
        adapter_source: what to record as the adapter's source (defaults to its local path).
        link: how the policy's weight files get into ``out`` (see :data:`LINK_MODES`).
        force: replace ``out`` if it exists.
        allow_pickle: accept an ``adapter_model.bin`` (read with weights_only=True, stored as safetensors).
        want_hash: hash linked (not copied) weight files too.
        progress_factory: called with the total bytes, returns a callback taking byte counts.
        durable: fsync before the final rename.

    Raises:
        InputError: any validation failure (exit 2); OutputExistsError when ``out`` exists without ``force``.
    """
    started = time.perf_counter()
    if link not in LINK_MODES:
        raise InputError(f"unknown --link mode {link!r}; choose one of {', '.join(LINK_MODES)}.")
    _check_adapter_name(adapter_name)
    policy = Path(policy)
    out = check_output_target(out, force=force, inputs=[policy, adapter])
    ckpt = open_checkpoint(policy)
    heads = [h for h in find_heads(ckpt) if h.convention in ("vhtool", "sidecar")]
    if not heads:
        raise InputError(
            f"{policy}: not a value-head checkpoint (no v_head.summary.* tensors); run `vhtool init {policy}` first "
            "and attach the adapter to its output."
        )
    manifest = ckpt.manifest
    if manifest is not None and manifest.role not in (None, "policy"):
        raise InputError(f"{policy}: is a {manifest.role} checkpoint; reward adapters belong on a policy.")
    info = inspect_adapter(Path(adapter), allow_pickle=allow_pickle)
    modules = check_fit(info, policy_tensor_shapes(ckpt), ckpt.config, where=f"the policy {policy}")

    notes: list[str] = []
    old = manifest.reward_adapter if manifest is not None else None
    skip_dirs: set[str] = set()
    if old is not None and old.subfolder is not None:
        skip_dirs.add(old.subfolder)
        notes.append(f"the policy's reward adapter {old.name!r} was replaced by {adapter_name!r}")
    if (ckpt.path / adapter_name).exists() and not (ckpt.path / adapter_name).is_dir():
        raise InputError(f"{policy}: already has a file named {adapter_name!r}; choose another --adapter-name.")
    other_dirs = sorted(p.name for p in ckpt.path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if adapter_name in other_dirs and adapter_name not in skip_dirs:
        raise InputError(f"{policy}: already has a folder {adapter_name!r}; choose another --adapter-name.")
    for name in other_dirs:
        if name not in skip_dirs:
            notes.append(f"the policy's subfolder {name!r} was not copied")

    files_to_place = list(ckpt.weight_files) + ([SIDECAR_FILE] if ckpt.sidecar is not None else [])
    total = sum(ckpt.path.joinpath(f).stat().st_size for f in files_to_place)
    progress = progress_factory(total) if progress_factory else None
    source = adapter_source or {"model": str(adapter), "kind": "local", "path": str(Path(adapter).resolve())}

    with atomic_output_dir(out, force=force, durable=durable, inputs=[policy, adapter]) as tmp:
        _copy_policy_aux(ckpt.path, tmp)
        records = place_weight_files(
            ckpt, tmp, files_to_place, link=link, want_hash=want_hash, progress=progress, fsync=durable
        )
        if ckpt.index is not None:
            shutil.copyfile(safe_member(ckpt.path, INDEX_FILE, "the index"), tmp / INDEX_FILE)
        adapter_files = _copy_adapter(info, tmp / adapter_name)
        base_model = info.config.get("base_model_name_or_path")
        targets = info.target_modules
        entry = RewardAdapterInfo(
            name=adapter_name,
            subfolder=adapter_name,
            source=SourceInfo.from_json(source, where="reward_adapter.source"),
            files=adapter_files,
            score_shape=info.score_shape,
            score_bias=info.has_score_bias,
            peft_type=info.peft_type,
            target_modules=tuple(targets) if isinstance(targets, list) else targets,
            base_model=base_model if isinstance(base_model, str) else None,
        )
        if manifest is not None:
            files = {**manifest.files, **files_section(records)}
            doc = manifest.replace(files={k: files[k] for k in sorted(files) if (tmp / k).exists()})
        else:
            doc = Manifest.new(
                role="policy",
                architecture="causal",
                source=SourceInfo(model=str(policy), kind="local", path=str(ckpt.path.resolve())),
                layout="sharded" if ckpt.sharded else "single-file",
                files=files_section(records),
            )
            notes.append(f"{policy} had no {MANIFEST_FILE}; one was written")
        write_manifest(tmp, doc.replace(reward_adapter=entry))
    return AttachResult(
        out=out,
        adapter_name=adapter_name,
        adapter_source=source,
        peft_type=info.peft_type,
        score_shape=info.score_shape,
        target_modules=info.target_modules,
        adapted_modules=len(modules),
        files=records,
        adapter_files=adapter_files,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def _copy_policy_aux(src: Path, dst: Path) -> None:
    copy_aux_files(src, dst)
    if (src / CARD_FILE).is_file():  # the policy's card stays with it (init leaves a source model's card behind)
        shutil.copyfile(safe_member(src, CARD_FILE, CARD_FILE), dst / CARD_FILE)


def _copy_adapter(info: AdapterInfo, dst: Path) -> dict[str, FileEntry]:
    """Copies the adapter's files that :func:`~vhtool.checkpoint.catalogue.adapter_copies` allows into ``dst``.

    A pickle is rewritten as safetensors. Returns the copied files' sizes and hashes.
    """
    dst.mkdir()
    for p in sorted(info.path.iterdir()):
        if not adapter_copies(p.name) or p.is_dir():
            continue
        real = adapter_member(info.path, p.name, "an adapter file")
        if real.is_file():
            shutil.copyfile(real, dst / p.name)
    if info.weights_file == ADAPTER_PICKLE:
        import torch
        from safetensors.torch import save_file

        state = torch.load(info.path / ADAPTER_PICKLE, map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(dst / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    if not (dst / ADAPTER_WEIGHTS).is_file():  # pragma: no cover - inspect_adapter guarantees it
        raise CheckpointError(f"{info.path}: adapter weights went missing during the copy.")
    return {
        p.name: FileEntry(size=p.stat().st_size, sha256=hash_file(p)) for p in sorted(dst.iterdir()) if p.is_file()
    }


__all__ = ["AttachResult", "attach_reward_adapter"]
