"""Pickle-only sources (``pytorch_model.bin``), read only on request and only with ``weights_only=True``."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vhtool.checkpoint.catalogue import INDEX_FILE, SINGLE_FILE, Kind, kind_of
from vhtool.checkpoint.catalogue import PICKLE_FILE as PICKLE_SINGLE
from vhtool.checkpoint.catalogue import PICKLE_INDEX_FILE as PICKLE_INDEX
from vhtool.checkpoint.layout import safe_member
from vhtool.errors import CheckpointError


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
            if p.is_file() and kind_of(p.name) not in (Kind.PICKLE, Kind.TRAINING):
                shutil.copyfile(safe_member(src, p.name, "a source file"), tmp_path / p.name)
        yield tmp_path
