"""``convert_checkpoint``: check the arguments, plan from headers, write the files, record it in ``vhtool.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.atomic import atomic_output_dir
from vhtool.checkpoint.catalogue import CONFIG_FILE
from vhtool.checkpoint.conventions import (
    TABLE,
    carried,
    detect_convention,
    detect_framework,
    readout_change_note,
    readout_for,
)
from vhtool.checkpoint.convert.adopt import adopt_checkpoint
from vhtool.checkpoint.convert.frameworks import convert_framework, needs_framework_path
from vhtool.checkpoint.convert.naming import CLASSIFIER_TARGETS, HEAD_NAMES, TARGETS
from vhtool.checkpoint.convert.plan import Plan, plan_conversion
from vhtool.checkpoint.convert.weights import write_index, write_weights
from vhtool.checkpoint.copyio import FileRecord, Progress
from vhtool.checkpoint.init_op import copy_aux_files
from vhtool.checkpoint.layout import SIDECAR_FILE, Checkpoint, open_checkpoint
from vhtool.checkpoint.manifest import (
    ConversionInfo,
    Manifest,
    SourceInfo,
    ValueHeadInfo,
    files_section,
    write_manifest,
)
from vhtool.checkpoint.target import check_output_target
from vhtool.checkpoint.writer import write_safetensors
from vhtool.choices import ROLES
from vhtool.errors import InputError

#: Conventions a checkpoint saved without vhtool.json is adopted into by converting it to its own convention.
ADOPTABLE = ("vhtool", "sidecar")


@dataclass(frozen=True)
class ConvertResult:
    """What ``convert_checkpoint`` wrote."""

    out: Path
    source_convention: str
    target: str
    head_tensors: tuple[str, ...]
    head_file: str
    layout: str
    architectures: tuple[str, ...]
    files: list[FileRecord]
    lost: list[str]
    normalization: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: True when SRC already followed the target convention without a vhtool.json, and was adopted as is.
    adopted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "from": self.source_convention,
            "to": self.target,
            "head": {"tensors": list(self.head_tensors), "file": self.head_file},
            "layout": self.layout,
            "architectures": list(self.architectures),
            "files": [f.to_json() for f in self.files],
            "lost": self.lost,
            "normalization": self.normalization,
            "warnings": self.warnings,
            "notes": self.notes,
            "adopted": self.adopted,
            "seconds": round(self.seconds, 3),
        }


def convert_checkpoint(
    src: Path,
    out: Path,
    *,
    to: str,
    head_name: str | None = None,
    pad_token_id: int | None = None,
    allow_lossy: bool = False,
    force: bool = False,
    progress_factory: Callable[[int], Progress] | None = None,
    durable: bool = True,
    source: str = "auto",
    role: str | None = None,
    allow_pickle: bool = False,
    config_from: Path | None = None,
) -> ConvertResult:
    """Writes ``src`` in the ``to`` convention into ``out`` (a temporary sibling renamed into place).

    Args:
        src: a local checkpoint directory in any of :data:`TARGETS`' conventions (detected from headers).
        out: the output directory.
        to: the target convention: ``vhtool``, ``sidecar``, ``seq-cls`` or ``token-cls``.
        head_name: the head's tensor name for a classifier target (``score``, ``value_head``,
            ``classifier``); default: the source's ``value_head_prefix`` if any, else the family's.
        pad_token_id: sets ``pad_token_id`` in ``config.json`` (a seq-cls model needs one to score batches).
        allow_lossy: drop a non-zero bias when the target cannot hold it (recorded as lost).
        force: replace ``out`` if it exists.
        progress_factory: called with the total bytes, returns a callback taking byte counts.
        durable: fsync before the final rename.
        source: the source's convention (``--from``), or ``auto`` (detected; a contradiction is refused).
        role: ``reward`` or ``critic`` (``--role``); default: the source convention's.
        allow_pickle: read a ``pytorch_model.bin`` source with the weights-only loader.
        config_from: a model folder whose ``config.json`` describes a bare state dict (trlx's summarisation RM).

    Raises:
        InputError: unknown target or head name, no head or several heads in ``src``, ``src`` already in
            the ``to`` convention, a target needing an LM head ``src`` lacks, a non-zero bias the target
            cannot hold (without ``allow_lossy``), ``out`` exists without ``force``.
    """
    started = time.perf_counter()
    _check_arguments(to=to, head_name=head_name, pad_token_id=pad_token_id)
    out = check_output_target(out, force=force, inputs=[src])
    if role is not None and role not in ROLES:
        raise InputError(f"unknown --role {role!r}; choose reward or critic.")
    if needs_framework_path(src, to=to, source=source, config_from=config_from):
        canon, written, records, the_role = convert_framework(
            src,
            out,
            to=to,
            source=source,
            role=role,
            allow_pickle=allow_pickle,
            config_from=config_from,
            allow_lossy=allow_lossy,
            head_name=head_name,
            force=force,
            durable=durable,
        )
        archs = written.config.get("architectures")
        return ConvertResult(
            out=out,
            source_convention=canon.convention,
            target=to,
            head_tensors=written.head,
            head_file=written.files[0][0],
            layout="single-file",
            architectures=tuple(a for a in archs if isinstance(a, str)) if isinstance(archs, list) else (),
            files=records,
            lost=written.lost,
            normalization=dict(canon.normalization),
            seconds=time.perf_counter() - started,
            warnings=written.warnings,
            notes=[*canon.notes, *written.notes, f"role {the_role}, readout {canon.readout} recorded in vhtool.json"],
        )
    ckpt = open_checkpoint(src)
    det = detect_convention(ckpt)
    if ckpt.is_encoder_decoder and to in CLASSIFIER_TARGETS:
        raise InputError(
            f"{ckpt.path}: is an encoder-decoder model; its value head converts only between vhtool and sidecar."
        )
    if det.convention == to and to in ADOPTABLE and ckpt.manifest is None:
        records, layout, notes = adopt_checkpoint(
            ckpt, det, out, force=force, durable=durable, progress_factory=progress_factory
        )
        archs = ckpt.config.get("architectures")
        head = det.head
        return ConvertResult(
            out=out,
            source_convention=det.convention,
            target=to,
            head_tensors=(head.weight, *([head.bias] if head.bias else [])),
            head_file=head.file,
            layout=layout,
            architectures=tuple(a for a in archs if isinstance(a, str)) if isinstance(archs, list) else (),
            files=records,
            lost=[],
            normalization={},
            seconds=time.perf_counter() - started,
            notes=notes,
            adopted=True,
        )
    plan = plan_conversion(
        ckpt, det, to=to, head_name=head_name, pad_token_id=pad_token_id, allow_lossy=allow_lossy, out=out
    )
    hs = plan.hs
    total = sum(h.file_size for h in ckpt.headers.values()) + (hs.hdr.file_size if not hs.inline else 0)
    progress = progress_factory(total) if progress_factory else None

    with atomic_output_dir(out, force=force, durable=durable, inputs=[src]) as tmp:
        copy_aux_files(ckpt.path, tmp)
        (tmp / CONFIG_FILE).write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        name, the_role, rule = _source_role_readout(ckpt, det.convention, role)
        change = readout_change_note(to=to, role=the_role, source=name, rule=rule)
        if change is not None:
            plan.notes.append(change)
        records, weight_map, head_file = write_weights(
            ckpt,
            tmp,
            head_out=plan.head_out,
            head_inline_at=det.head.weight if hs.inline else None,
            src_head_names=plan.src_head_names,
            drop=plan.drop,
            to_sidecar=to == "sidecar",
            progress=progress,
        )
        if to == "sidecar":
            records.append(write_safetensors(tmp / SIDECAR_FILE, plan.head_out, metadata={"format": "pt"}))
            head_file = SIDECAR_FILE
        layout = "sharded" if ckpt.sharded else "single-file"
        if ckpt.sharded:
            write_index(tmp, ckpt, weight_map)
        write_manifest(
            tmp, _manifest(ckpt, plan, to=to, records=records, head_file=head_file, layout=layout, role=role)
        )

    archs = plan.config.get("architectures")
    return ConvertResult(
        out=out,
        source_convention=det.convention,
        target=to,
        head_tensors=tuple(t.name for t in plan.head_out),
        head_file=head_file,
        layout=layout,
        architectures=tuple(a for a in archs if isinstance(a, str)) if isinstance(archs, list) else (),
        files=records,
        lost=plan.lost,
        normalization=plan.normalization,
        seconds=time.perf_counter() - started,
        warnings=plan.warnings,
        notes=plan.notes,
    )


def _check_arguments(*, to: str, head_name: str | None, pad_token_id: int | None) -> None:
    if to not in TARGETS:
        raise InputError(f"unknown --to {to!r}; choose one of {', '.join(TARGETS)}.")
    if head_name is not None and head_name not in HEAD_NAMES:
        raise InputError(f"unknown --head-name {head_name!r}; choose one of {', '.join(HEAD_NAMES)}.")
    if head_name is not None and to not in CLASSIFIER_TARGETS:
        raise InputError(f"--head-name applies to --to {' or '.join(CLASSIFIER_TARGETS)}, not --to {to}.")
    if pad_token_id is not None and pad_token_id < 0:
        raise InputError(f"--pad-token-id must be >= 0, got {pad_token_id}.")


def _manifest(
    ckpt: Checkpoint,
    plan: Plan,
    *,
    to: str,
    records: list[FileRecord],
    head_file: str,
    layout: str,
    role: str | None = None,
) -> Manifest:
    """The output's ``vhtool.json``: a fresh policy manifest recording the source, the head and what was lost."""
    src_manifest = ckpt.manifest
    src_vh = src_manifest.value_head if src_manifest is not None else None
    head = plan.det.head
    value_head = ValueHeadInfo(
        convention=to,
        tensors=tuple(t.name for t in plan.head_out),
        file=head_file,
        dtype=plan.head_info.dtype,
        hidden_size=plan.hidden,
        # how the head was made, when the source recorded it
        init_strategy=src_vh.init_strategy if src_vh is not None else None,
        initializer_range=src_vh.initializer_range if src_vh is not None else None,
        seed=src_vh.seed if src_vh is not None else None,
    )
    return Manifest.new(
        # a classifier with one output computing the value is a critic (what PPO trainers load as value_model)
        role=role or carried(src_manifest, None)[0] or ("critic" if to in CLASSIFIER_TARGETS else "policy"),
        architecture="seq2seq" if ckpt.is_encoder_decoder else "causal",
        source=SourceInfo(
            model=str(ckpt.path.resolve()),
            convention=plan.det.convention,
            origin=src_manifest.source if src_manifest is not None else None,
        ),
        model_dtype=ckpt.dominant_dtype(plan.drop | plan.src_head_names),
        layout=layout,
        value_head=value_head,
        conversion=ConversionInfo(
            source=plan.det.convention,
            target=to,
            source_head=(head.weight, *([head.bias] if head.bias else [])),
            lost=tuple(plan.lost),
            dropped_untrained=tuple(plan.dropped_untrained) or None,
            # the source's rule, so that `score` reads the converted head where the source was read
            readout=_source_readout(ckpt, plan.det.convention, role),
        ),
        files=files_section(records),
        normalization=plan.normalization or None,
    )


def _source_role_readout(ckpt: Checkpoint, convention: str, role: str | None) -> tuple[str, str, str]:
    """The source's convention name (its framework's, when it is one), role and readout rule: ``--role``, else what
    its ``vhtool.json`` carries from an earlier conversion, else its framework's (OpenRLHF, verl), else its
    convention's."""
    rec_role, rec_rule = carried(ckpt.manifest, role)
    fw = detect_framework(set(ckpt.tensors), ckpt.config)
    name = fw.convention.name if fw is not None else convention
    the_role = role or rec_role or (fw.role if fw is not None else TABLE[name].role)
    return name, the_role, rec_rule or readout_for(name, the_role)


def _source_readout(ckpt: Checkpoint, convention: str, role: str | None) -> str:
    return _source_role_readout(ckpt, convention, role)[2]


__all__ = ["ConvertResult", "convert_checkpoint"]
