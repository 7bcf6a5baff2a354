"""A PEFT reward adapter as files: what it holds and whether it fits a policy, from its config and headers.

The adapter is validated from its ``adapter_config.json`` and safetensors headers only (no torch,
no model load): PEFT type, a score head of shape ``[1, hidden]``, the adapted modules present in the
policy with matching shapes, the base architecture. Used by ``attach-reward-adapter``
(:mod:`vhtool.checkpoint.attach_op`) and by the torch side when it loads an adapter.

Adapter tensors fall in three groups (see :func:`inspect_adapter`):

* *tuner* tensors (``lora_A``, ``lora_B``, ``ia3_l``...): loaded by PEFT into the adapter;
* the *score* head (``score.weight``, optional ``score.bias``): the reward head;
* *override* tensors (LoRA ``bias="all"``/``"lora_only"`` biases, other ``modules_to_save``): base
  tensors the reward model replaced. vhtool swaps them in only while scoring, so the policy's own
  forward is unchanged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.checkpoint.catalogue import CONFIG_FILE
from vhtool.checkpoint.layout import Checkpoint, hidden_size, read_json_object, safe_member
from vhtool.checkpoint.names import ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_WEIGHTS
from vhtool.checkpoint.safetensors_io import read_header
from vhtool.errors import CheckpointError, InputError

#: The PEFT prefix of every saved key (``PeftModel.base_model.model``).
PEFT_PREFIX = "base_model.model."
#: Module names a reward head goes by (TRL's ``supported_rm_modules``).
SCORE_MODULES = ("score",)
#: Parameter-name prefixes of PEFT tuner layers (LoRA, AdaLoRA, IA3, LoHa, LoKr, VeRA, OFT, BOFT, ...).
TUNER_PREFIXES = (
    "lora_",
    "ia3_",
    "hada_",
    "lokr_",
    "vera_",
    "oft_",
    "boft_",
    "fourierft_",
    "hra_",
    "vblora_",
    "ranklist",
)


@dataclass(frozen=True)
class AdapterInfo:
    """What a PEFT adapter directory holds, read from its config and safetensors header.

    Attributes:
        path: the adapter directory.
        config: the parsed ``adapter_config.json``.
        peft_type: e.g. ``LORA``.
        weights_file: ``adapter_model.safetensors`` (or ``adapter_model.bin`` when pickles are allowed).
        shapes: every saved tensor name -> shape (empty for a pickle not yet read).
        score_keys: ``weight`` (and ``bias``) -> the saved key of the score head.
        score_shape: ``[num_labels, hidden]``.
        tuner_keys: saved keys of tuner tensors (module path -> list of keys).
        override_keys: saved key -> policy tensor name, for base tensors the adapter replaces.
    """

    path: Path
    config: dict[str, Any]
    peft_type: str
    weights_file: str
    shapes: dict[str, tuple[int, ...]]
    score_keys: dict[str, str]
    score_shape: tuple[int, ...]
    tuner_keys: dict[str, list[str]]
    override_keys: dict[str, str]

    @property
    def target_modules(self) -> list[str] | str | None:
        tm = self.config.get("target_modules")
        if isinstance(tm, (list, tuple, set)):
            return sorted(str(t) for t in tm)
        return tm if isinstance(tm, str) else None

    @property
    def has_score_bias(self) -> bool:
        return "bias" in self.score_keys


def _tuner_split(rel: str) -> tuple[str, str] | None:
    """``(module path, tuner part)`` when ``rel`` is a tuner tensor (``x.y.lora_A.weight``), else ``None``."""
    parts = rel.split(".")
    for i, part in enumerate(parts):
        if i and part.startswith(TUNER_PREFIXES):
            return ".".join(parts[:i]), ".".join(parts[i:])
    return None


def _score_split(rel: str) -> tuple[str, str] | None:
    """``(module, "weight"|"bias")`` for a saved score-head key, in PEFT's plain or ``modules_to_save`` form."""
    parts = rel.split(".")
    if len(parts) < 2 or parts[-1] not in ("weight", "bias"):
        return None
    stem = parts[:-1]
    if len(stem) >= 3 and stem[-2] == "modules_to_save":
        stem = stem[:-2]
    elif stem and stem[-1] == "original_module":
        return None  # an old PEFT copy of the untrained head: never the reward head
    if len(stem) == 1 and stem[0] in SCORE_MODULES:
        return stem[0], parts[-1]
    return None


def _base_name(rel: str) -> str:
    """The policy tensor a saved non-tuner key stands for (``x.base_layer.bias`` -> ``x.bias``)."""
    parts = [p for p in rel.split(".") if p != "base_layer"]
    if len(parts) >= 4 and parts[-3] == "modules_to_save":
        parts = parts[:-3] + parts[-1:]
    return ".".join(parts)


def adapter_member(folder: Path, name: str, what: str) -> Path:
    """:func:`safe_member` for an adapter folder, which may be a subfolder of a Hub-cache snapshot.

    Files of a Hub snapshot are links into the repo's ``blobs/``; ``safe_member`` accepts those for a
    snapshot's top level only, so for a snapshot's subfolder the link is checked against ``blobs/`` here.
    """
    try:
        return safe_member(folder, name, what)
    except CheckpointError:
        real_folder = folder.resolve()
        snap = next((p for p in real_folder.parents if p.parent.name == "snapshots"), None)
        if snap is None or not snap.parent.parent.name.startswith("models--") or not (folder / name).is_symlink():
            raise
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise
        blobs = snap.parent.parent / "blobs"
        if (folder / name).resolve().parent != blobs:
            raise
        return folder / name


def inspect_adapter(path: Path, *, allow_pickle: bool = False) -> AdapterInfo:
    """Reads and validates a reward adapter directory from its config and weights header.

    Raises:
        InputError: not a PEFT adapter directory, pickle weights without ``allow_pickle``, or a score head
            that is missing or not ``[1, hidden]``.
        CheckpointError: a malformed config or safetensors header.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a directory; ADAPTER must be a PEFT adapter directory or a Hub id.")
    if not (path / ADAPTER_CONFIG).is_file():
        raise InputError(
            f"{path}: not a PEFT adapter directory (no {ADAPTER_CONFIG}); pass the folder written by "
            "PeftModel.save_pretrained."
        )
    config = read_json_object(adapter_member(path, ADAPTER_CONFIG, ADAPTER_CONFIG), ADAPTER_CONFIG)
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or not peft_type:
        raise InputError(f"{path / ADAPTER_CONFIG}: no peft_type; this is not a PEFT adapter config.")
    if config.get("is_prompt_learning") or peft_type.upper() in (
        "PROMPT_TUNING",
        "P_TUNING",
        "PREFIX_TUNING",
        "MULTITASK_PROMPT_TUNING",
        "CPT",
    ):
        raise InputError(f"{path}: a {peft_type} (prompt-learning) adapter cannot be a reward adapter; use LoRA.")

    shapes: dict[str, tuple[int, ...]] = {}
    if (path / ADAPTER_WEIGHTS).is_file():
        weights_file = ADAPTER_WEIGHTS
        hdr = read_header(adapter_member(path, ADAPTER_WEIGHTS, "the adapter weights"))
        shapes = {name: info.shape for name, info in hdr.tensors.items()}
    elif (path / ADAPTER_PICKLE).is_file():
        if not allow_pickle:
            raise InputError(
                f"{path}: the adapter weights are a pickle ({ADAPTER_PICKLE}); vhtool never unpickles by default. "
                "Pass --allow-pickle to read it with weights_only=True (it is stored as safetensors in OUT)."
            )
        weights_file = ADAPTER_PICKLE
        shapes = _pickle_shapes(adapter_member(path, ADAPTER_PICKLE, "the adapter weights"))
    else:
        raise InputError(f"{path}: no {ADAPTER_WEIGHTS} (a PEFT adapter directory has its config and weights).")

    score_keys: dict[str, str] = {}
    tuner_keys: dict[str, list[str]] = {}
    override_keys: dict[str, str] = {}
    for key in sorted(shapes):
        rel = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        score = _score_split(rel)
        if score is not None:
            score_keys[score[1]] = key
            continue
        if rel.split(".")[0] in SCORE_MODULES:
            continue  # e.g. score.original_module.weight
        tuner = _tuner_split(rel)
        if tuner is not None:
            tuner_keys.setdefault(tuner[0], []).append(key)
        else:
            override_keys[key] = _base_name(rel)
    if "weight" not in score_keys:
        raise InputError(
            f"{path}: the adapter has no score head (no score.weight among its tensors), so its rewards would come "
            'from a random head. Train the reward model with PEFT task_type="SEQ_CLS" or '
            'modules_to_save=["score"] so the head is saved with the adapter.'
        )
    score_shape = shapes[score_keys["weight"]]
    if len(score_shape) != 2:
        raise InputError(f"{path}: score head has shape {list(score_shape)}; a reward head is [1, hidden].")
    if score_shape[0] != 1:
        raise InputError(
            f"{path}: score head has shape {list(score_shape)} ({score_shape[0]} labels); a reward model has one "
            "output (num_labels=1). A 2-label classifier's logits are not a scalar reward."
        )
    if "bias" in score_keys and shapes[score_keys["bias"]] != (1,):
        raise InputError(f"{path}: score bias has shape {list(shapes[score_keys['bias']])}; expected [1].")
    if not tuner_keys:
        raise InputError(f"{path}: the adapter holds no {peft_type} tensors (only a score head); nothing to attach.")
    return AdapterInfo(
        path=path,
        config=config,
        peft_type=peft_type,
        weights_file=weights_file,
        shapes=shapes,
        score_keys=score_keys,
        score_shape=score_shape,
        tuner_keys=tuner_keys,
        override_keys=override_keys,
    )


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def _base_model_type(info: AdapterInfo) -> str | None:
    """The ``model_type`` of the base the adapter was trained on, when its config can be found locally."""
    base = info.config.get("base_model_name_or_path")
    candidates = [info.path / CONFIG_FILE]
    if isinstance(base, str) and base:
        candidates.append(Path(base).expanduser() / CONFIG_FILE)
    for cand in candidates:
        try:
            if cand.is_file():
                doc = json.loads(cand.read_text(encoding="utf-8"))
                mt = doc.get("model_type") if isinstance(doc, dict) else None
                if isinstance(mt, str):
                    return mt
        except (OSError, ValueError):
            continue
    return None


def _target_matches(target: str, module: str) -> bool:
    return module == target or module.endswith("." + target)


def check_fit(
    info: AdapterInfo, tensors: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], *, where: str
) -> dict[str, str]:
    """Checks that the adapter fits a policy given its tensor shapes and config; returns adapted module paths.

    Args:
        info: the inspected adapter.
        tensors: the policy's tensor names -> shapes (by header, or a live model's parameters).
        config: the policy's config as a dict.
        where: how to name the policy in messages.

    Returns:
        adapter module path -> the policy module path it adapts.

    Raises:
        InputError: another architecture, another hidden size, or target modules the policy lacks.
    """
    policy_type = config.get("model_type")
    base_type = _base_model_type(info)
    base_name = info.config.get("base_model_name_or_path") or "unknown"
    if config.get("is_encoder_decoder"):
        raise InputError(f"{where}: reward adapters are supported on causal-LM policies, not encoder-decoders.")
    if base_type is not None and policy_type is not None and base_type != policy_type:
        raise InputError(
            f"the adapter was trained on a {base_type} model ({base_name}) but {where} is a {policy_type}; "
            "attach it to a policy of the same architecture."
        )
    hidden = hidden_size(dict(config))
    if info.score_shape[1] != hidden:
        raise InputError(
            f"the adapter's score head reads hidden size {info.score_shape[1]} but {where} has hidden size {hidden}; "
            f"the adapter was trained on another model ({base_name})."
        )
    modules: dict[str, str] = {}
    module_names = {n.rsplit(".", 1)[0] for n in tensors if "." in n}
    for mod, keys in sorted(info.tuner_keys.items()):
        target = _policy_module(mod, module_names)
        if target is None:
            raise InputError(
                f"the adapter adapts {mod!r}, which {where} does not have; it was trained for another architecture "
                f"({base_name}, {base_type or 'unknown type'}) than the policy ({policy_type})."
            )
        modules[mod] = target
        _check_lora_shapes(info, mod, keys, tensors.get(f"{target}.weight"), where=where)
    for key, name in sorted(info.override_keys.items()):
        target_name = _policy_tensor(name, tensors)
        if target_name is None:
            raise InputError(
                f"the adapter replaces tensor {name!r}, which {where} does not have; it was trained for another "
                f"architecture ({base_name})."
            )
        if tuple(tensors[target_name]) != tuple(info.shapes[key]):
            raise InputError(
                f"the adapter's {name} has shape {list(info.shapes[key])} but {where} has "
                f"{list(tensors[target_name])}; hidden sizes differ."
            )
    tm = info.config.get("target_modules")
    policy_modules = sorted(module_names)
    if isinstance(tm, str):
        if not any(re.fullmatch(tm, m) for m in policy_modules):
            raise InputError(f"target_modules pattern {tm!r} of the adapter matches no module of {where}.")
    elif isinstance(tm, (list, tuple)):
        missing = [t for t in tm if isinstance(t, str) and not any(_target_matches(t, m) for m in policy_modules)]
        if missing:
            raise InputError(
                f"the adapter targets modules {missing} that {where} does not have; it was trained for another "
                f"architecture ({base_name})."
            )
    return modules


def _policy_module(mod: str, module_names: set[str]) -> str | None:
    if mod in module_names:
        return mod
    # a policy saved from the bare backbone (no ``transformer.``/``model.`` prefix) or vice versa
    tail = mod.split(".", 1)[1] if "." in mod else None
    if tail and tail in module_names:
        return tail
    return None


def _policy_tensor(name: str, tensors: Mapping[str, tuple[int, ...]]) -> str | None:
    if name in tensors:
        return name
    tail = name.split(".", 1)[1] if "." in name else None
    return tail if tail and tail in tensors else None


def _check_lora_shapes(
    info: AdapterInfo, mod: str, keys: list[str], weight: tuple[int, ...] | None, *, where: str
) -> None:
    """LoRA A/B (or embedding A/B) shapes against the adapted weight, for 2-D weights."""
    if weight is None or len(weight) != 2:
        return
    a = next((info.shapes[k] for k in keys if k.endswith(("lora_A.weight", "lora_embedding_A"))), None)
    b = next((info.shapes[k] for k in keys if k.endswith(("lora_B.weight", "lora_embedding_B"))), None)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return
    if any(k.endswith("lora_embedding_A") for k in keys):
        pair = (a[1], b[0])  # embedding: A [r, num_embeddings], B [dim, r]
        ok = tuple(weight) == pair
    else:
        fan_in, fan_out = a[1], b[0]  # Linear weight [out, in]; GPT-2 Conv1D [in, out]
        ok = tuple(weight) in ((fan_out, fan_in), (fan_in, fan_out))
    if not ok:
        raise InputError(
            f"the adapter's LoRA on {mod!r} maps {a[1]} -> {b[0]} features but {where}'s weight there is "
            f"{list(weight)}; the hidden sizes differ (trained on {info.config.get('base_model_name_or_path')})."
        )


def policy_tensor_shapes(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    return {name: loc.info.shape for name, loc in ckpt.tensors.items()}


__all__ = [
    "PEFT_PREFIX",
    "SCORE_MODULES",
    "TUNER_PREFIXES",
    "AdapterInfo",
    "adapter_member",
    "check_fit",
    "inspect_adapter",
    "policy_tensor_shapes",
]
