"""``vhtool make-reference``: a frozen reference checkpoint of a policy, recording which tensors it shares.

Built from files like ``init``: the policy's weight files are copied (or linked) as they are, so
the reference loads on its own anywhere; ``vhtool.json`` records the block pattern, N, the exact
shared tensor names and the sha256 of the policy files it was made from, so that
``vhtool.load_policy_and_reference`` can share those tensors in memory and refuse a policy whose
shared layers have changed since.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.atomic import atomic_output_dir
from vhtool.checkpoint.blocks import find_blocks, shared_tensor_names
from vhtool.checkpoint.copyio import LINK_MODES, FileRecord, Progress
from vhtool.checkpoint.init_op import copy_aux_files, place_weight_files
from vhtool.checkpoint.layout import INDEX_FILE, SIDECAR_FILE, open_checkpoint, safe_member
from vhtool.checkpoint.manifest import Manifest, PolicyRef, ReferenceInfo, files_section, write_manifest
from vhtool.checkpoint.target import check_output_target
from vhtool.errors import InputError


@dataclass(frozen=True)
class ReferenceResult:
    out: Path
    shared_layers: int | None
    pattern: str
    num_blocks: int
    shared_tensors: list[str]
    files: list[FileRecord]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "shared_layers": self.shared_layers,
            "pattern": self.pattern,
            "num_blocks": self.num_blocks,
            "shared_tensors": len(self.shared_tensors),
            "files": [f.to_json() for f in self.files],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def make_reference(
    policy: Path,
    out: Path,
    *,
    shared_layers: int | None,
    pattern: str | None = None,
    link: str = "auto",
    force: bool = False,
    want_hash: bool = False,
    progress_factory: Callable[[int], Progress] | None = None,
    durable: bool = True,
) -> ReferenceResult:
    """Writes a frozen reference of ``policy`` to ``out`` (atomically), sharing embeddings + the first N blocks.

    Args:
        policy: a policy checkpoint directory (made by ``vhtool init`` or any value-head checkpoint).
        out: the reference directory.
        shared_layers: N, the number of leading blocks shared with the policy; ``None`` for a full
            frozen copy that shares nothing.
        pattern: the block pattern (``model.layers.{layer}``) when detection from names is not wanted.
        link, force, want_hash, progress_factory, durable: as for ``init``.

    Raises:
        InputError: POLICY is not a checkpoint or is itself a reference, N out of range, a pattern
            that matches nothing, OUT exists without ``force``.
    """
    started = time.perf_counter()
    if link not in LINK_MODES:
        raise InputError(f"unknown --link mode {link!r}; choose one of {', '.join(LINK_MODES)}.")
    out = check_output_target(out, force=force, inputs=[policy])
    ckpt = open_checkpoint(policy)
    manifest = ckpt.manifest
    if manifest is not None and manifest.role == "reference":
        raise InputError(f"{policy}: is a reference checkpoint (vhtool.json role 'reference'); pass the policy.")
    names = [n for n in ckpt.tensors if not n.startswith("v_head.")]
    blocks = find_blocks(names, pattern)
    shared = shared_tensor_names(names, blocks, shared_layers) if shared_layers is not None else []
    if shared_layers is None and pattern is not None:
        find_blocks(names, pattern)  # a typo is an error even for a full copy
    notes: list[str] = []
    recorded = {k: v.sha256 for k, v in manifest.files.items()} if manifest is not None else {}
    total = sum((ckpt.path / f).stat().st_size for f in ckpt.weight_files)
    progress = progress_factory(total) if progress_factory else None

    with atomic_output_dir(out, force=force, durable=durable, inputs=[policy]) as tmp:
        copy_aux_files(ckpt.path, tmp)
        extra = [SIDECAR_FILE] if ckpt.sidecar is not None else []
        records = place_weight_files(
            ckpt,
            tmp,
            ckpt.weight_files + extra,
            link=link,
            want_hash=want_hash,
            progress=progress,
            fsync=durable,
            known_sha256=recorded,
        )
        if ckpt.sharded:
            (tmp / INDEX_FILE).write_bytes(safe_member(ckpt.path, INDEX_FILE, "the index").read_bytes())
        policy_files = {r.name: r.sha256 for r in records if r.name != SIDECAR_FILE}
        if any(v is None for v in policy_files.values()):
            notes.append("linked policy files were not hashed (pass --hash); drift is then checked tensor by tensor")
        base = manifest if manifest is not None else Manifest.new(role="reference", architecture=_arch(ckpt.config))
        reference = base.replace(
            role="reference",
            architecture=base.architecture or _arch(ckpt.config),
            files=files_section(records),
            reward_adapter=None,  # the reference is the frozen policy, not a scorer
            reference=ReferenceInfo(
                shared_layers=shared_layers,
                pattern=blocks.pattern,
                num_blocks=blocks.num_blocks,
                frozen=True,
                shared_tensors=tuple(shared),
                policy=PolicyRef(path=str(ckpt.path.resolve()), files=policy_files),
            ),
        )
        write_manifest(tmp, reference)
    return ReferenceResult(
        out=out,
        shared_layers=shared_layers,
        pattern=blocks.pattern,
        num_blocks=blocks.num_blocks,
        shared_tensors=shared,
        files=records,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def _arch(config: dict[str, Any]) -> str:
    return "seq2seq" if config.get("is_encoder_decoder") else "causal"
