"""Value-head checkpoints without a ``vhtool.json``: what ``save_pretrained`` writes after training.

Two kinds reach vhtool this way:

* a full model saved by vhtool's or TRL's ``save_pretrained`` (``config.json`` and safetensors weights, single
  file or sharded, with ``v_head.summary.*`` among the tensors): it opens as any checkpoint
  (:func:`vhtool.checkpoint.layout.open_checkpoint`) and only lacks the manifest;
* a PEFT policy folder (``adapter_config.json`` + ``adapter_model.safetensors``, no ``config.json``) with the
  value head in its own file: ``model.safetensors`` (vhtool, and what TRL 1.12.0 reads), ``value_head.safetensors``
  (vhtool 0.1.0) or ``pytorch_model.bin`` (TRL 1.12.0's ``torch.save``; read only when the caller allows pickle,
  and then with ``weights_only=True``).

This module finds and reads such folders and builds the manifest vhtool would have written for them (an
``adopted`` section records where they came from). It never writes into them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vhtool.checkpoint.catalogue import CONFIG_FILE, PICKLE_FILE, SINGLE_FILE
from vhtool.checkpoint.catalogue import PEFT_HEAD_FILES as PEFT_HEAD_FILES
from vhtool.checkpoint.conventions import VHEAD_BIAS, VHEAD_WEIGHT
from vhtool.checkpoint.jsonio import read_json_object
from vhtool.checkpoint.layout import safe_member
from vhtool.checkpoint.manifest import AdoptedInfo, FileEntry, Manifest, SourceInfo, ValueHeadInfo
from vhtool.checkpoint.names import ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_WEIGHTS
from vhtool.checkpoint.safetensors_io import build_header, read_header, read_tensor_values
from vhtool.errors import CheckpointError, InputError

#: TRL 1.12.0's PEFT value head (a pickle written by ``torch.save``).
TRL_PEFT_HEAD = PICKLE_FILE
#: The head file a published PEFT policy carries (TRL 1.12.0 and vhtool read it there).
PUBLISHED_PEFT_HEAD = SINGLE_FILE

_NUMPY_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
_TORCH_DTYPES = {"torch.float16": "F16", "torch.float32": "F32", "torch.float64": "F64", "torch.bfloat16": "BF16"}


def is_peft_folder(root: Path) -> bool:
    """True for a PEFT adapter folder (``adapter_config.json``, no ``config.json``): a PEFT policy's save."""
    return (root / ADAPTER_CONFIG).is_file() and not (root / CONFIG_FILE).is_file()


@dataclass(frozen=True)
class HeadTensors:
    """A value head read whole (it is ``hidden + 1`` numbers): values for checks, raw bytes for copies."""

    file: str
    dtype: str
    weight_shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None
    weight: Any  # numpy float64 values
    bias: Any | None
    raw: Mapping[str, bytes]

    def safetensors_bytes(self) -> bytes:
        """The head as a ``model.safetensors`` holding ``v_head.summary.*`` (what vhtool's PEFT save writes)."""
        items = [(VHEAD_WEIGHT, self.dtype, self.weight_shape, self.raw[VHEAD_WEIGHT])]
        if self.bias_shape is not None:
            items.append((VHEAD_BIAS, self.dtype, self.bias_shape, self.raw[VHEAD_BIAS]))
        header, _ = build_header([(n, d, s, len(b)) for n, d, s, b in items], {"format": "pt"})
        return header + b"".join(b for *_, b in items)


@dataclass(frozen=True)
class PeftFolder:
    """A PEFT policy folder: its adapter config, the adapter weight file, and where the value head is."""

    path: Path
    adapter_config: dict[str, Any]
    adapter_weights: str | None
    head_file: str | None

    @property
    def pickled_head(self) -> bool:
        return self.head_file == TRL_PEFT_HEAD

    @property
    def architecture(self) -> str:
        return "seq2seq" if self.adapter_config.get("task_type") == "SEQ_2_SEQ_LM" else "causal"

    @property
    def base_model(self) -> str | None:
        base = self.adapter_config.get("base_model_name_or_path")
        return base if isinstance(base, str) and base else None

    def base_hidden_size(self) -> int | None:
        """The base model's hidden size when its ``config.json`` is on this machine (a local path), else None."""
        from vhtool.checkpoint.layout import hidden_size

        base = self.base_model
        if base is None:
            return None
        if base.startswith("builtin:"):
            from vhtool.builtin import builtin_path, is_builtin

            if not is_builtin(base):
                return None
            base = str(builtin_path(base.removeprefix("builtin:")))
        cfg = Path(base) / CONFIG_FILE
        if not cfg.is_file():
            return None
        try:
            return hidden_size(read_json_object(cfg, "the base model's config.json"))
        except (InputError, CheckpointError):
            return None


def open_peft_folder(root: Path) -> PeftFolder:
    """Reads a PEFT policy folder's adapter config and finds its weight files (no tensor data read).

    Raises:
        CheckpointError: ``adapter_config.json`` is not a JSON object, or a file is a link leading outside.
    """
    config = read_json_object(safe_member(root, ADAPTER_CONFIG, ADAPTER_CONFIG), ADAPTER_CONFIG)
    weights = next((n for n in (ADAPTER_WEIGHTS, ADAPTER_PICKLE) if (root / n).is_file()), None)
    head = next((n for n in (*PEFT_HEAD_FILES, TRL_PEFT_HEAD) if (root / n).is_file()), None)
    if weights is not None:
        safe_member(root, weights, "the adapter weights")
    if head is not None:
        safe_member(root, head, "the value head")
    return PeftFolder(path=root, adapter_config=config, adapter_weights=weights, head_file=head)


def read_peft_head(folder: PeftFolder, *, allow_pickle: bool) -> HeadTensors:
    """The value head of a PEFT policy folder, from safetensors or (``allow_pickle``) TRL's pickle.

    Raises:
        InputError: the head is only in a pickle and ``allow_pickle`` is false (the message says the flag).
        CheckpointError: no head file, or one without ``v_head.summary.weight``, or an unreadable file.
    """
    root = folder.path
    if folder.head_file is None:
        raise CheckpointError(
            f"{root}: a PEFT adapter folder without a value head (looked for {', '.join(PEFT_HEAD_FILES)} and "
            f"{TRL_PEFT_HEAD}); a value-head policy's save_pretrained writes one beside the adapter."
        )
    if folder.pickled_head:
        if not allow_pickle:
            raise InputError(
                f"{root}: the value head is in {TRL_PEFT_HEAD}, a pickle (TRL 1.12.0's PEFT save); vhtool never "
                "unpickles by default: pass --allow-pickle to read it with torch.load(weights_only=True)."
            )
        return _read_pickled_head(root / folder.head_file)
    hdr = read_header(root / folder.head_file)
    if VHEAD_WEIGHT not in hdr.tensors:
        raise CheckpointError(f"{root / folder.head_file}: holds no {VHEAD_WEIGHT}.")
    w = hdr.tensors[VHEAD_WEIGHT]
    b = hdr.tensors.get(VHEAD_BIAS)
    raw: dict[str, bytes] = {}
    with open(hdr.path, "rb") as f:
        for info in (w, *([b] if b is not None else [])):
            f.seek(hdr.data_start + info.begin)
            raw[info.name] = f.read(info.nbytes)
    return HeadTensors(
        file=folder.head_file,
        dtype=w.dtype,
        weight_shape=w.shape,
        bias_shape=b.shape if b is not None else None,
        weight=read_tensor_values(hdr, w),
        bias=read_tensor_values(hdr, b) if b is not None else None,
        raw=raw,
    )


def _read_pickled_head(path: Path) -> HeadTensors:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read with weights_only=True ({exc}).") from exc
    if not isinstance(state, dict) or VHEAD_WEIGHT not in state:
        raise CheckpointError(f"{path}: holds no {VHEAD_WEIGHT}.")
    w = state[VHEAD_WEIGHT].detach().contiguous()
    b = state.get(VHEAD_BIAS)
    dtype = _TORCH_DTYPES.get(str(w.dtype))
    if dtype is None:
        raise CheckpointError(f"{path}: {VHEAD_WEIGHT} is {w.dtype}, not a float dtype.")
    tensors = {VHEAD_WEIGHT: w, **({VHEAD_BIAS: b.detach().to(w.dtype).contiguous()} if b is not None else {})}
    # bytes through a uint8 view: numpy has no bfloat16, and safetensors is little-endian like every CPU we run on
    raw = {n: t.reshape(-1).view(torch.uint8).numpy().tobytes() for n, t in tensors.items()}
    values = {n: t.to(torch.float64).numpy() for n, t in tensors.items()}
    return HeadTensors(
        file=path.name,
        dtype=dtype,
        weight_shape=tuple(w.shape),
        bias_shape=tuple(b.shape) if b is not None else None,
        weight=values[VHEAD_WEIGHT],
        bias=values.get(VHEAD_BIAS),
        raw=raw,
    )


def non_finite(head: HeadTensors) -> list[str]:
    """``["<tensor> has N NaN/inf value(s)", ...]`` for the head's tensors."""
    bad = []
    for name, values in ((VHEAD_WEIGHT, head.weight), (VHEAD_BIAS, head.bias)):
        if values is None:
            continue
        n_bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if n_bad:
            bad.append(f"{name} has {n_bad} NaN/inf value(s)")
    return bad


def adopted_manifest(
    root: Path,
    *,
    kind: str,
    by: str,
    architecture: str,
    head_file: str,
    files: Mapping[str, FileEntry],
    hidden: int | None,
    head_dtype: str | None,
    convention: str = "vhtool",
    model_dtype: str | None = None,
    layout: str | None = None,
    source: SourceInfo | None = None,
) -> Manifest:
    """The manifest of a checkpoint saved without one: a policy, its files and hashes, and where it came from.

    Nothing is known about how the head was initialised (it was trained), so ``value_head`` records only
    what the files show.
    """
    return Manifest.new(
        role="policy",
        architecture=architecture,
        source=source or SourceInfo(path=str(Path(os.path.abspath(root))), kind="local"),
        model_dtype=model_dtype,
        layout=layout,
        value_head=ValueHeadInfo(
            dtype=head_dtype,
            hidden_size=hidden,
            tensors=(VHEAD_WEIGHT, VHEAD_BIAS),
            file=head_file,
            convention=convention,
        ),
        files=dict(sorted(files.items())),
        adopted=AdoptedInfo(path=str(Path(os.path.abspath(root))), kind=kind, head_file=head_file, by=by),
    )


__all__ = [
    "PEFT_HEAD_FILES",
    "PUBLISHED_PEFT_HEAD",
    "TRL_PEFT_HEAD",
    "HeadTensors",
    "PeftFolder",
    "adopted_manifest",
    "is_peft_folder",
    "non_finite",
    "open_peft_folder",
    "read_peft_head",
]
