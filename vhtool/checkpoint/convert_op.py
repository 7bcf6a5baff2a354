"""``vhtool convert``: move a value/reward head between the field's conventions, renaming at the header level.

The conventions (see :data:`vhtool.checkpoint.conventions.CONVENTIONS`):

* ``vhtool`` (TRL inline): ``v_head.summary.weight [1,h]`` + ``v_head.summary.bias [1]`` among a causal
  LM's tensors;
* ``sidecar`` (LLaMA-Factory): the same two tensors in ``value_head.safetensors`` next to a plain causal LM;
* ``seq-cls`` (HF ``...ForSequenceClassification`` with ``num_labels=1``, OpenRLHF reward models): the
  backbone without an LM head plus ``score.weight [1,h]`` (or ``value_head.weight``), no bias;
* ``token-cls`` (HF ``...ForTokenClassification``, verl critics): the same with a bias (``score.*`` for
  Llama-style families, ``classifier.*`` for GPT-2-style ones; OpenRLHF's ``value_head`` has none).

Backbone tensors keep their names (transformers uses the same base-model prefix in the causal and the
classification classes); only the head is renamed, the LM head dropped or required, and ``config.json``
adjusted. Tensor bytes move in the kernel, shard by shard; only the bias (one number) is read by Python.

Losses: dropping an LM head that is not tied to the embeddings is inherent to a classifier target and
only warned about (and recorded in ``vhtool.json``); dropping a *non-zero* bias changes every value the
head computes, so it is refused unless ``allow_lossy`` (and then recorded). A target that needs an LM
head the source does not have (untied embeddings) is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.atomic import atomic_output_dir
from vhtool.checkpoint.conventions import CONVENTIONS, VHEAD_BIAS, VHEAD_WEIGHT, Detected, detect_convention
from vhtool.checkpoint.copyio import FileRecord, Progress, place_file
from vhtool.checkpoint.init_op import HEAD_SHARD, copy_aux_files
from vhtool.checkpoint.layout import INDEX_FILE, SIDECAR_FILE, SINGLE_FILE, Checkpoint, hidden_size, open_checkpoint
from vhtool.checkpoint.manifest import (
    ConversionInfo,
    Manifest,
    SourceInfo,
    ValueHeadInfo,
    files_section,
    write_manifest,
)
from vhtool.checkpoint.safetensors_io import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    read_tensor_values,
)
from vhtool.checkpoint.target import check_output_target
from vhtool.checkpoint.writer import PlannedTensor, RangeSource, write_safetensors
from vhtool.errors import CheckpointError, InputError

TARGETS = CONVENTIONS
CLASSIFIER_TARGETS = ("seq-cls", "token-cls")
HEAD_NAMES = ("score", "value_head", "classifier")
#: Keys OpenRLHF keeps in ``config.json`` for reward normalisation and the head's name.
NORM_KEYS = ("normalize_reward", "mean", "std", "value_head_prefix")

_ARCH_SUFFIXES = ("LMHeadModel", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification")
#: Families whose causal class is ``<Stem>LMHeadModel`` rather than ``<Stem>ForCausalLM``.
_LMHEAD_STEMS = frozenset({"GPT2", "OpenAIGPT", "CTRL"})
#: Class-name stems by ``model_type``, for configs whose ``architectures`` is missing or custom (OpenRLHF).
_STEMS = {
    "gpt2": "GPT2",
    "gpt_neo": "GPTNeo",
    "gpt_neox": "GPTNeoX",
    "gpt_bigcode": "GPTBigCode",
    "gptj": "GPTJ",
    "opt": "OPT",
    "bloom": "Bloom",
    "falcon": "Falcon",
    "llama": "Llama",
    "mistral": "Mistral",
    "mixtral": "Mixtral",
    "qwen2": "Qwen2",
    "qwen2_moe": "Qwen2Moe",
    "qwen3": "Qwen3",
    "qwen3_moe": "Qwen3Moe",
    "gemma": "Gemma",
    "gemma2": "Gemma2",
    "phi": "Phi",
    "phi3": "Phi3",
    "stablelm": "StableLm",
    "starcoder2": "Starcoder2",
}
#: Families whose ``...ForTokenClassification`` names its head ``classifier`` (the others use ``score``).
_CLASSIFIER_FAMILIES = frozenset({"gpt2", "gpt_neo", "gpt_neox", "gpt_bigcode", "bloom", "falcon", "mpt", "biogpt"})


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
            "seconds": round(self.seconds, 3),
        }


def default_output_name(src: Path, target: str) -> str:
    """``./<src-name>-<target>`` (e.g. ``./gpt2-value-head-seq-cls``)."""
    name = Path(src).resolve().name or "model"
    return f"{name}-{target}"


def target_architecture(config: dict[str, Any], target: str) -> str | None:
    """The transformers class name for ``target`` in ``config``'s family, or None when it cannot be named.

    Derived from the source's ``architectures`` by swapping the suffix (``GPT2LMHeadModel`` <->
    ``GPT2ForSequenceClassification``), else from ``model_type`` through a small table.
    """
    stem: str | None = None
    archs = config.get("architectures")
    if isinstance(archs, list):
        for a in archs:
            if isinstance(a, str):
                for suffix in _ARCH_SUFFIXES:
                    if a.endswith(suffix) and len(a) > len(suffix):
                        stem = a[: -len(suffix)]
                        break
            if stem:
                break
    if stem is None:
        stem = _STEMS.get(str(config.get("model_type", "")))
    if stem is None:
        return None
    if target == "seq-cls":
        return f"{stem}ForSequenceClassification"
    if target == "token-cls":
        return f"{stem}ForTokenClassification"
    if config.get("is_encoder_decoder"):
        return f"{stem}ForConditionalGeneration"
    return f"{stem}LMHeadModel" if stem in _LMHEAD_STEMS else f"{stem}ForCausalLM"


def default_head_name(config: dict[str, Any], target: str, normalization: dict[str, Any]) -> str:
    """The head name a classifier target gets when ``--head-name`` is not given."""
    prefix = config.get("value_head_prefix", normalization.get("value_head_prefix"))
    if prefix in HEAD_NAMES:
        return str(prefix)
    if target == "token-cls" and config.get("model_type") in _CLASSIFIER_FAMILIES:
        return "classifier"
    return "score"


def target_head_keys(target: str, head_name: str) -> tuple[str, str | None]:
    """``(weight key, bias key or None)`` of the head in ``target``."""
    if target in ("vhtool", "sidecar"):
        return VHEAD_WEIGHT, VHEAD_BIAS
    if target == "token-cls" and head_name != "value_head":
        return f"{head_name}.weight", f"{head_name}.bias"
    return f"{head_name}.weight", None


def _range(path: Path, hdr: SafetensorsHeader, info: TensorInfo) -> RangeSource:
    return RangeSource(path, hdr.data_start + info.begin, info.nbytes)


@dataclass(frozen=True)
class _HeadSource:
    """Where the source head's tensors live: header, path, and whether inline among the weights."""

    hdr: SafetensorsHeader
    path: Path
    inline: bool


def _head_source(ckpt: Checkpoint, det: Detected) -> _HeadSource:
    if det.convention == "sidecar":
        assert ckpt.sidecar is not None
        return _HeadSource(ckpt.sidecar, ckpt.path / SIDECAR_FILE, inline=False)
    return _HeadSource(ckpt.headers[det.head.file], ckpt.path / det.head.file, inline=True)


def _source_header(ckpt: Checkpoint, hs: _HeadSource, name: str) -> tuple[SafetensorsHeader, TensorInfo]:
    if hs.inline:
        loc = ckpt.tensors[name]
        return ckpt.headers[loc.file], loc.info
    return hs.hdr, hs.hdr.tensors[name]


def _source_tensor(ckpt: Checkpoint, hs: _HeadSource, name: str) -> tuple[TensorInfo, RangeSource]:
    hdr, info = _source_header(ckpt, hs, name)
    return info, _range(hdr.path, hdr, info)


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

    Raises:
        InputError: unknown target or head name, no head or several heads in ``src``, ``src`` already in
            the ``to`` convention, a target needing an LM head ``src`` lacks, a non-zero bias the target
            cannot hold (without ``allow_lossy``), ``out`` exists without ``force``.
    """
    started = time.perf_counter()
    if to not in TARGETS:
        raise InputError(f"unknown --to {to!r}; choose one of {', '.join(TARGETS)}.")
    if head_name is not None and head_name not in HEAD_NAMES:
        raise InputError(f"unknown --head-name {head_name!r}; choose one of {', '.join(HEAD_NAMES)}.")
    if head_name is not None and to not in CLASSIFIER_TARGETS:
        raise InputError(f"--head-name applies to --to {' or '.join(CLASSIFIER_TARGETS)}, not --to {to}.")
    if pad_token_id is not None and pad_token_id < 0:
        raise InputError(f"--pad-token-id must be >= 0, got {pad_token_id}.")
    out = check_output_target(out, force=force, inputs=[src])
    ckpt = open_checkpoint(src)
    det = detect_convention(ckpt)
    head = det.head
    if ckpt.is_encoder_decoder and to in CLASSIFIER_TARGETS:
        raise InputError(
            f"{ckpt.path}: is an encoder-decoder model; its value head converts only between vhtool and sidecar."
        )

    # The head must be scalar: [1, hidden] (+ [1] bias) in a float dtype.
    hidden = hidden_size(ckpt.config)
    if head.shape != (1, hidden) or head.dtype not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{ckpt.path}: {head.weight} is {head.dtype} {list(head.shape)}; only a scalar head "
            f"(num_labels=1, shape [1, {hidden}], a float dtype) converts."
        )
    if head.bias is not None and (head.bias_shape != (1,) or head.bias_dtype not in FLOAT_DTYPES):
        raise CheckpointError(
            f"{ckpt.path}: {head.bias} is {head.bias_dtype} {list(head.bias_shape or ())}; expected [1]."
        )

    src_manifest = ckpt.manifest
    m_norm = src_manifest.normalization if src_manifest is not None else None
    normalization: dict[str, Any] = dict(m_norm) if m_norm is not None else {}
    normalization.update({k: ckpt.config[k] for k in NORM_KEYS if k in ckpt.config})

    name = head_name or (default_head_name(ckpt.config, to, normalization) if to in CLASSIFIER_TARGETS else "v_head")
    tw, tb = target_head_keys(to, name)
    if det.convention == to and (to not in CLASSIFIER_TARGETS or tw == head.weight):
        raise InputError(f"{ckpt.path}: is already in the {to} convention ({head.description}); nothing to convert.")

    warnings: list[str] = []
    notes: list[str] = []
    lost: list[str] = []
    hs = _head_source(ckpt, det)

    # The head as the target holds it: the weight renamed, the bias renamed, zero-filled, or dropped.
    w_info, w_range = _source_tensor(ckpt, hs, head.weight)
    head_out = [PlannedTensor(tw, w_info.dtype, w_info.shape, w_range)]
    if tb is not None:
        if head.bias is not None:
            b_info, b_range = _source_tensor(ckpt, hs, head.bias)
            head_out.append(PlannedTensor(tb, b_info.dtype, b_info.shape, b_range))
        else:
            head_out.append(PlannedTensor(tb, w_info.dtype, (1,), b"\0" * DTYPE_SIZES[w_info.dtype]))
            notes.append(f"the source head has no bias; wrote a zero {tb}")
    elif head.bias is not None:
        value = float(read_tensor_values(*_source_header(ckpt, hs, head.bias)).reshape(-1)[0])
        if value != 0.0:
            if not allow_lossy:
                raise InputError(
                    f"{ckpt.path}: {head.bias} is {value:g}, but a {to} head named {name!r} has no bias, so every "
                    "value would shift; convert --to token-cls or sidecar instead, or pass --allow-lossy to drop it."
                )
            lost.append(f"{head.bias} (value {value!r})")
            warnings.append(f"dropped the non-zero bias {head.bias} = {value:g}: values shift by that constant")
        else:
            notes.append(f"dropped {head.bias} (zero)")

    # The LM head: a classifier target has none; a causal target needs one (or tied embeddings).
    drop: set[str] = set()
    if to in CLASSIFIER_TARGETS:
        drop.update(det.lm_head)
        if det.lm_head and det.tied:
            notes.append(f"dropped {', '.join(det.lm_head)} (tied to the embeddings, nothing lost)")
        if det.lm_head and not det.tied:
            lost.extend(det.lm_head)
            warnings.append(
                f"dropped the LM head ({', '.join(det.lm_head)}), which is not tied to the embeddings: "
                "converting back cannot recover it"
            )
    elif not det.has_lm_head:
        raise InputError(
            f"{ckpt.path}: target {to} needs an LM head the source does not have (no lm_head.weight and "
            "tie_word_embeddings is false); a value-head policy must also generate."
        )
    reward = src_manifest.reward_adapter if src_manifest is not None else None
    if reward is not None:
        lost.append(f"reward adapter {reward.subfolder or reward.name or '(subfolder)'}")
        warnings.append("the source's reward adapter is not carried over; attach it again with attach-reward-adapter")

    config = _target_config(ckpt.config, to=to, head_name=name, normalization=normalization, pad_token_id=pad_token_id)
    if to == "seq-cls" and config.get("pad_token_id") is None:
        warnings.append(
            "config.json has no pad_token_id: transformers' sequence classifiers then score one sequence at a time; "
            "pass --pad-token-id to set it"
        )
    if to in CLASSIFIER_TARGETS and "architectures" not in config:
        warnings.append("could not name the target class for this family; config.json has no `architectures`")

    src_head_names = {head.weight, *([head.bias] if head.bias else [])} if hs.inline else set()
    total = sum(h.file_size for h in ckpt.headers.values()) + (hs.hdr.file_size if not hs.inline else 0)
    progress = progress_factory(total) if progress_factory else None

    with atomic_output_dir(out, force=force, durable=durable, inputs=[src]) as tmp:
        copy_aux_files(ckpt.path, tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        records, weight_map, head_file = _write_weights(
            ckpt,
            tmp,
            head_out=head_out,
            head_inline_at=head.weight if hs.inline else None,
            src_head_names=src_head_names,
            drop=drop,
            to_sidecar=to == "sidecar",
            progress=progress,
        )
        if to == "sidecar":
            records.append(write_safetensors(tmp / SIDECAR_FILE, head_out, metadata={"format": "pt"}))
            head_file = SIDECAR_FILE
        layout = "sharded" if ckpt.sharded else "single-file"
        if ckpt.sharded:
            total_size = sum(n for _, n in weight_map.values())
            meta = dict((ckpt.index or {}).get("metadata") or {})
            meta["total_size"] = total_size
            index = {"metadata": meta, "weight_map": {k: weight_map[k][0] for k in sorted(weight_map)}}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        src_vh = src_manifest.value_head if src_manifest is not None else None
        value_head = ValueHeadInfo(
            convention=to,
            tensors=tuple(t.name for t in head_out),
            file=head_file,
            dtype=w_info.dtype,
            hidden_size=hidden,
            # how the head was made, when the source recorded it
            init_strategy=src_vh.init_strategy if src_vh is not None else None,
            initializer_range=src_vh.initializer_range if src_vh is not None else None,
            seed=src_vh.seed if src_vh is not None else None,
        )
        manifest = Manifest.new(
            role="policy",
            architecture="seq2seq" if ckpt.is_encoder_decoder else "causal",
            source=SourceInfo(
                model=str(ckpt.path.resolve()),
                convention=det.convention,
                origin=src_manifest.source if src_manifest is not None else None,
            ),
            model_dtype=ckpt.dominant_dtype(drop | src_head_names),
            layout=layout,
            value_head=value_head,
            conversion=ConversionInfo(
                source=det.convention,
                target=to,
                source_head=(head.weight, *([head.bias] if head.bias else [])),
                lost=tuple(lost),
            ),
            files=files_section(records),
            normalization=normalization or None,
        )
        write_manifest(tmp, manifest)

    archs = config.get("architectures")
    return ConvertResult(
        out=out,
        source_convention=det.convention,
        target=to,
        head_tensors=tuple(t.name for t in head_out),
        head_file=head_file,
        layout=layout,
        architectures=tuple(a for a in archs if isinstance(a, str)) if isinstance(archs, list) else (),
        files=records,
        lost=lost,
        normalization=normalization,
        seconds=time.perf_counter() - started,
        warnings=warnings,
        notes=notes,
    )


def _write_weights(
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
            items.append(PlannedTensor(t.name, t.dtype, t.shape, _range(path, hdr, t)))
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


def _target_config(
    src: dict[str, Any],
    *,
    to: str,
    head_name: str,
    normalization: dict[str, Any],
    pad_token_id: int | None,
) -> dict[str, Any]:
    """``config.json`` for the target: class name, one label, pad token, normalisation statistics."""
    config = dict(src)
    arch = target_architecture(src, to)
    if arch is not None:
        config["architectures"] = [arch]
    elif to in CLASSIFIER_TARGETS:
        config.pop("architectures", None)
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    if to in CLASSIFIER_TARGETS:
        config["id2label"] = {"0": "LABEL_0"}
        config["label2id"] = {"LABEL_0": 0}
        config.pop("num_labels", None)
        for key in ("normalize_reward", "mean", "std"):
            if key in normalization and key not in config:
                config[key] = normalization[key]
        if head_name == "value_head" or "value_head_prefix" in config:
            config["value_head_prefix"] = head_name
    return config


__all__ = [
    "CLASSIFIER_TARGETS",
    "HEAD_NAMES",
    "NORM_KEYS",
    "TARGETS",
    "ConvertResult",
    "convert_checkpoint",
    "default_head_name",
    "default_output_name",
    "target_architecture",
    "target_head_keys",
]
