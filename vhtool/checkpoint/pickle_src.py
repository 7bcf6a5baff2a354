"""Pickle-only sources (``pytorch_model.bin``), read only on request and only with ``weights_only=True``."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from vhtool.checkpoint.catalogue import (
    CONFIG_FILE,
    INDEX_FILE,
    PICKLE_FILE,
    PICKLE_INDEX_FILE,
    SINGLE_FILE,
    Kind,
    kind_of,
)
from vhtool.checkpoint.layout import read_json_object, safe_member
from vhtool.errors import CheckpointError, InputError

if TYPE_CHECKING:
    import torch

# the catalogue's names, under the names this module has always exported
PICKLE_SINGLE = PICKLE_FILE
PICKLE_INDEX = PICKLE_INDEX_FILE


@contextmanager
def safetensors_view(src: Path) -> Iterator[Path]:
    """Yields ``src`` itself when it has safetensors weights, else a temporary safetensors copy of its pickles.

    The pickles are loaded with ``torch.load(weights_only=True)``, which refuses arbitrary objects.
    """
    if (src / SINGLE_FILE).is_file() or (src / INDEX_FILE).is_file():
        yield src
        return
    if (src / PICKLE_INDEX).is_file():
        wmap = json.loads((src / PICKLE_INDEX).read_text(encoding="utf-8")).get("weight_map") or {}
        files = sorted(set(wmap.values()))
    elif (src / PICKLE_SINGLE).is_file():
        files = [PICKLE_SINGLE]
    else:
        yield src  # not a pickle source either: open_checkpoint reports what is wrong
        return
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="vhtool-unpickled-") as tmp:
        tmp_path = Path(tmp)
        state: dict[str, torch.Tensor] = {}
        for name in files:
            try:
                part = torch.load(safe_member(src, name, "the pickle index"), map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"{src / name}: cannot be read with weights_only=True ({exc}).") from exc
            if not isinstance(part, dict):
                raise CheckpointError(f"{src / name}: not a state dict.")
            state.update(part)
        # Tied tensors share storage in the pickle; safetensors wants distinct, contiguous tensors.
        state = {k: v.detach().clone().contiguous() for k, v in state.items()}
        save_file(state, str(tmp_path / SINGLE_FILE), metadata={"format": "pt"})
        # Everything but the pickles: the view is the source as safetensors (a sidecar head, vhtool.json and all),
        # and init then copies from it what it copies from any source.
        for p in src.iterdir():
            if p.is_file() and kind_of(p.name) not in (Kind.PICKLE, Kind.TRAINING, Kind.INDEX, Kind.WEIGHTS):
                shutil.copyfile(safe_member(src, p.name, "a source file"), tmp_path / p.name)
        yield tmp_path


def weight_files(src: Path) -> tuple[str, list[str]]:
    """``(format, files)`` of a checkpoint directory's weights: ``safetensors`` first, else ``pickle``.

    Raises:
        InputError: no weights of either format.
    """
    for fmt, single, index in (("safetensors", SINGLE_FILE, INDEX_FILE), ("pickle", PICKLE_FILE, PICKLE_INDEX_FILE)):
        # the single file first, as transformers' from_pretrained does: a stale index beside it is not read
        if (src / single).is_file():
            return fmt, [single]
        if (src / index).is_file():
            wmap = read_json_object(safe_member(src, index, "the index"), index).get("weight_map") or {}
            if not isinstance(wmap, dict):
                raise CheckpointError(f"{src / index}: weight_map is not an object.")
            return fmt, sorted({str(v) for v in wmap.values()})
    raise InputError(f"{src}: no weights ({SINGLE_FILE}, {INDEX_FILE}, {PICKLE_FILE} or {PICKLE_INDEX_FILE}).")


def pickle_refusal(src: Path) -> InputError:
    """The one message for a pickle source read without ``--allow-pickle``."""
    return InputError(
        f"{src}: its weights are a pickle ({PICKLE_FILE}), which can run code when loaded; pass --allow-pickle to "
        "read it with torch's weights-only loader (tensors only, nothing executed)."
    )


def load_state_dict(src: Path, *, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of ``src``'s weights, by name, and the format they were in (``safetensors`` or ``pickle``).

    Pickles are read only with ``allow_pickle`` and only through ``torch.load(weights_only=True)``.

    Raises:
        InputError: no weights, or pickle weights without ``allow_pickle``.
        CheckpointError: a file cannot be read, or a pickle holds something other than a state dict of tensors.
    """
    from safetensors.torch import load_file

    fmt, files = weight_files(src)
    if fmt == "pickle" and not allow_pickle:
        raise pickle_refusal(src)
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = safe_member(src, name, "the weight index")
        if fmt == "safetensors":
            try:
                state.update(load_file(str(path)))
            except Exception as exc:
                raise CheckpointError(f"{path}: not readable as safetensors ({exc}).") from exc
            continue
        state.update(load_pickle_file(path))
    return state, fmt


def load_pickle_file(path: Path) -> dict[str, torch.Tensor]:
    """One ``pytorch_model.bin`` (or shard) through ``torch.load(weights_only=True)``: a state dict of tensors.

    Raises:
        CheckpointError: unreadable with the weights-only loader, or not a state dict of tensors.
    """
    import torch

    try:
        part = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read with weights_only=True ({exc}).") from exc
    if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors.")
    return {str(k): v for k, v in part.items()}


def read_config(src: Path, *, config_from: Path | None = None) -> dict[str, object] | None:
    """``src``'s ``config.json`` (or ``config_from``'s, for a bare state dict such as trlx's summarisation RM)."""
    for root in (config_from, src) if config_from is not None else (src,):
        if root is not None and (root / CONFIG_FILE).is_file():
            return read_json_object(safe_member(root, CONFIG_FILE, CONFIG_FILE), CONFIG_FILE)
    return None
