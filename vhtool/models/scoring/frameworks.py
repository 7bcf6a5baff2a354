"""Scoring a framework's checkpoint (OpenRLHF, DeepSpeed-Chat, trlx, verl) as the framework computes it.

The checkpoint is read into the canonical form (:mod:`vhtool.checkpoint.convert.frameworks`: transformers'
``AutoModel`` keys + the head), the backbone built with ``AutoModel.from_config`` and loaded **strictly** (a missing
or unexpected key is an error, never a random layer), and the head applied to its last hidden state: exactly the
frameworks' own forward (``base_model(input_ids).last_hidden_state`` then the head; OpenRLHF model.py:227-231,
DeepSpeed-Chat reward_model.py:150-159, trlx modeling_ppo.py AutoModelForCausalLMWithValueHead.forward).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vhtool.checkpoint.conventions import detect_framework
from vhtool.checkpoint.convert.frameworks import Canon, read_canon
from vhtool.checkpoint.pickle_src import load_state_dict, pickle_refusal, read_config, weight_files
from vhtool.errors import CheckpointError, InputError


def framework_checkpoint(local_dir: Path | None, *, allow_pickle: bool) -> Canon | None:
    """``local_dir`` read as a framework's checkpoint, or ``None`` when it is not one (or not local).

    Safetensors are recognised from their headers; a pickle-only folder only with ``allow_pickle`` (otherwise the
    value-head loader refuses it with its own message).
    """
    if local_dir is None:
        return None
    try:
        fmt, files = weight_files(local_dir)
    except InputError:
        return None
    if fmt == "pickle" and not allow_pickle:
        # transformers itself would load the pickle (weights-only): vhtool reads a pickle only when asked
        raise pickle_refusal(local_dir)
    config = read_config(local_dir)
    if fmt == "safetensors":
        from safetensors import safe_open

        keys: set[str] = set()
        for name in files:
            try:
                with safe_open(str(local_dir / name), framework="pt") as f:
                    keys.update(f.keys())
            except Exception as exc:  # malformed headers: the loaders below report it
                raise CheckpointError(f"{local_dir / name}: not readable as safetensors ({exc}).") from exc
    else:
        keys = set(load_state_dict(local_dir, allow_pickle=True)[0])
    if detect_framework(keys, config) is None:
        return None
    return read_canon(local_dir, allow_pickle=allow_pickle)


def build_model(canon: Canon, dtype: Any) -> Any:
    """The backbone (strictly loaded) with the head on top, as one module the scoring engine runs."""
    from torch import nn
    from transformers import AutoConfig, AutoModel

    cfg_dict = {k: v for k, v in canon.config.items() if k not in ("architectures", "auto_map")}
    model_type = cfg_dict.pop("model_type", None)
    if not isinstance(model_type, str):
        raise InputError("config.json has no model_type; cannot build the backbone.")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    config.use_cache = False
    backbone = AutoModel.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    missing, unexpected = backbone.load_state_dict(canon.backbone, strict=False)
    # non-persistent buffers (causal masks) are not in a state dict; anything else missing is a random layer
    persistent = {n for n, _ in backbone.named_parameters()} | set(backbone.state_dict())
    missing = [k for k in missing if k in persistent]
    if missing or unexpected:
        shown = ", ".join([*missing[:3], *unexpected[:3]])
        raise CheckpointError(
            f"the {canon.convention} backbone does not match {type(backbone).__name__}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected tensors ({shown})."
        )
    if canon.mlp:
        h = int(canon.head["0.weight"].shape[1])
        head: nn.Module = nn.Sequential(nn.Linear(h, 2 * h), nn.ReLU(), nn.Linear(2 * h, 1))
        state = dict(canon.head)
    else:
        w = canon.head["weight"]
        head = nn.Sequential(nn.Linear(int(w.shape[1]), 1, bias="bias" in canon.head))
        state = {f"0.{k}": v for k, v in canon.head.items()}
    shapes = {k: v.shape for k, v in head.state_dict().items()}
    head.load_state_dict({k: v.reshape(shapes[k]) if k in shapes else v for k, v in state.items()}, strict=True)
    head.to(dtype)
    return HeadOnBackbone(backbone, head, prefix=canon.base or "model")


def _module_base() -> Any:
    from torch import nn

    return nn.Module


class HeadOnBackbone(_module_base()):  # type: ignore[misc]
    """A backbone under its family's ``base_model_prefix`` and a one-output head named ``score``.

    The scoring engine finds the backbone by ``base_model_prefix`` and the head by ``score``; ``forward`` returns
    the per-token outputs as ``logits`` (for the engine's self-check).
    """

    def __init__(self, backbone: Any, head: Any, *, prefix: str) -> None:
        super().__init__()
        self.base_model_prefix = prefix
        setattr(self, prefix, backbone)
        self.score = head
        self.config = backbone.config

    def get_input_embeddings(self) -> Any:
        return getattr(self, self.base_model_prefix).get_input_embeddings()

    def forward(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        out = getattr(self, self.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return SimpleNamespace(logits=self.score(out.last_hidden_state))


__all__ = ["HeadOnBackbone", "build_model", "framework_checkpoint"]
