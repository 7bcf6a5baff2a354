"""Frozen reference models that share their first layers with the policy, without copying them even briefly."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vhtool.checkpoint.blocks import embedding_after_blocks, is_embedding_name, pattern_regex
from vhtool.errors import InputError


@dataclass(frozen=True)
class BlockContainer:
    """The ``nn.ModuleList`` holding a model's repeated blocks, as a name pattern like ``transformer.h.{layer}``."""

    pattern: str
    num_blocks: int


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "pretrained_model", model)


def find_block_container(model: nn.Module, pattern: str | None = None) -> BlockContainer:
    """Finds the block container of any architecture, or checks a user ``pattern`` against the model.

    Without a pattern: the homogeneous ``nn.ModuleList`` (all children of one class) that is not
    nested in another one and holds the most parameters; for encoder-decoders the encoder's blocks
    come first in the forward pass and are chosen when their size is comparable to the decoder's.
    Patterns are relative to the wrapper's parameter names (as ``named_parameters()`` prints them).
    """
    names = [n for n, _ in model.named_parameters()]
    if pattern is not None:
        regex = pattern_regex(pattern)
        indices = {int(m.group(1)) for n in names if (m := regex.search(n))}
        if not indices:
            raise InputError(f"pattern {pattern!r} matches no parameter of the model (check for a typo).")
        return BlockContainer(pattern=pattern, num_blocks=max(indices) + 1)
    candidates: list[tuple[str, int, int]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        if any(name.startswith(c + ".") for c, _, _ in candidates):
            continue
        size = sum(p.numel() for p in module.parameters())
        if size:
            candidates.append((name, len(module), size))
    if not candidates:
        raise InputError("cannot find the model's block container; pass pattern='<path>.{layer}'.")
    largest = max(size for _, _, size in candidates)
    name, count, _ = next(c for c in candidates if c[2] * 2 >= largest)
    return BlockContainer(pattern=f"{name}.{{layer}}", num_blocks=count)


def shared_parameter_names(model: nn.Module, container: BlockContainer, num_shared_layers: int) -> list[str]:
    """Embedding parameters and those of blocks ``0..N-1``, in ``named_parameters`` order.

    Embeddings are the input-side tensors before the blocks (``nn.Embedding`` modules and names
    like ``embed_tokens``, ``wte``, ``shared``, ``project_in``); output-side tensors some models
    define early (OPT's ``project_out`` and final norm) stay the policy's own.
    """
    if num_shared_layers < 0 or num_shared_layers > container.num_blocks:
        raise InputError(
            f"num_shared_layers={num_shared_layers} is out of range: the model has {container.num_blocks} blocks "
            f"({container.pattern}); use 0..{container.num_blocks}."
        )
    regex = pattern_regex(container.pattern)
    embedding_modules = {
        f"{name}.{p}" if name else p
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding)
        for p, _ in module.named_parameters(recurse=False)
    }
    shared: list[str] = []
    for name, _ in model.named_parameters():
        m = regex.search(name)
        if m is not None:
            if int(m.group(1)) < num_shared_layers:
                shared.append(name)
        elif (name in embedding_modules or is_embedding_name(name)) and not embedding_after_blocks(
            name, container.pattern
        ):
            shared.append(name)
    return shared


def create_reference_model(
    model: nn.Module, num_shared_layers: int | None = None, pattern: str | None = None
) -> nn.Module:
    """A frozen ``eval()`` copy of ``model``; with ``num_shared_layers=N``, embeddings and first N blocks are shared.

    Shared parameters are the very same ``nn.Parameter`` objects in both models (frozen in both);
    they are never copied, not even transiently (the deep copy is told to reuse them). Everything
    else is copied and frozen in the reference.

    Raises:
        InputError: N < 0 or N > the number of blocks, or a pattern that matches nothing.
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # type: ignore[no-untyped-call]
        raise InputError("DeepSpeed ZeRO-3 is enabled: create the reference with AutoModel...from_pretrained instead.")
    if num_shared_layers is None:
        if pattern is not None:
            find_block_container(model, pattern)  # a typo is an error even when nothing is shared
        ref = copy.deepcopy(model)
        shared: list[str] = []
    else:
        container = find_block_container(model, pattern)
        shared = shared_parameter_names(model, container, num_shared_layers)
        params = dict(model.named_parameters())
        memo: dict[int, Any] = {id(params[n]): params[n] for n in shared}
        ref = copy.deepcopy(model, memo)
        for n in shared:
            params[n].requires_grad_(False)
    for p in ref.parameters():
        p.requires_grad_(False)
    setattr(ref, "shared_parameter_names", shared)  # noqa: B010  (plain attribute, not a submodule)
    return ref.eval()


def load_policy_and_reference(
    policy_dir: str | Path, reference_dir: str | Path, **kwargs: Any
) -> tuple[nn.Module, nn.Module]:
    """Loads a policy and its reference (made by ``vhtool make-reference``) with the shared tensors held once.

    The policy is loaded normally; the reference is built around it: the tensors its ``vhtool.json``
    records as shared are the policy's own parameters (frozen in both), and only the unshared ones
    are read from the reference checkpoint. Before sharing, each shared tensor of the policy is
    compared with the reference's stored copy, so a policy whose shared layers changed after
    ``make-reference`` (the "frozen reference drifts" bug) is refused.

    Args:
        policy_dir: the policy checkpoint.
        reference_dir: the reference checkpoint.
        **kwargs: passed to ``from_pretrained`` of the policy (e.g. ``dtype``).

    Returns:
        ``(policy, reference)``; the reference is in ``eval()`` mode with every parameter frozen.

    Raises:
        InputError: the reference is not a vhtool reference, or its shared tensors no longer match.
    """
    import torch
    from safetensors import safe_open

    from vhtool.checkpoint.layout import open_checkpoint
    from vhtool.models.value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

    ref_ckpt = open_checkpoint(reference_dir)
    manifest = ref_ckpt.manifest or {}
    info = manifest.get("reference")
    if manifest.get("role") != "reference" or not isinstance(info, dict):
        raise InputError(f"{reference_dir}: not a vhtool reference (vhtool.json has no role 'reference').")
    cls = AutoModelForSeq2SeqLMWithValueHead if ref_ckpt.is_encoder_decoder else AutoModelForCausalLMWithValueHead
    policy = cls.from_pretrained(str(policy_dir), **kwargs)
    params = dict(policy.named_parameters())

    def param_name(tensor: str) -> str:
        return tensor if tensor.startswith("v_head.") else f"pretrained_model.{tensor}"

    shared = [param_name(n) for n in info.get("shared_tensors") or []]
    missing = [n for n in shared if n not in params]
    if missing:
        raise InputError(f"{reference_dir}: shared tensor {missing[0]!r} is not a parameter of the policy.")
    # Drift check: the policy's shared tensors must equal what the reference stored at make-reference time.
    for tensor in info.get("shared_tensors") or []:
        stored_at = ref_ckpt.tensors.get(tensor)
        if stored_at is None:
            raise InputError(f"{reference_dir}: vhtool.json lists shared tensor {tensor!r}; no weight file holds it.")
        with safe_open(str(ref_ckpt.weight_path(stored_at.file)), framework="pt") as fh:
            stored = fh.get_tensor(tensor)
        mine = params[param_name(tensor)].detach()
        if stored.shape != mine.shape or not torch.equal(stored.to(mine.dtype), mine.cpu()):
            raise InputError(
                f"the policy's shared tensor {tensor!r} differs from the reference's copy: the policy changed after "
                "`vhtool make-reference`; make a new reference from the current policy."
            )
    memo: dict[int, Any] = {id(params[n]): params[n] for n in shared}
    reference = copy.deepcopy(policy, memo)
    ref_params = dict(reference.named_parameters())
    by_file: dict[str, list[tuple[str, str]]] = {}
    for pname in ref_params:
        if pname in shared:
            continue
        tensor = pname[len("pretrained_model.") :] if pname.startswith("pretrained_model.") else pname
        loc = ref_ckpt.tensors.get(tensor)
        if loc is not None:
            by_file.setdefault(loc.file, []).append((pname, tensor))
    with torch.no_grad():
        for file, items in by_file.items():
            with safe_open(str(ref_ckpt.weight_path(file)), framework="pt") as fh:
                for pname, tensor in items:
                    target = ref_params[pname]
                    target.copy_(fh.get_tensor(tensor).to(dtype=target.dtype, device=target.device))
    for n in shared:
        params[n].requires_grad_(False)
    for p in reference.parameters():
        p.requires_grad_(False)
    setattr(reference, "shared_parameter_names", shared)  # noqa: B010
    return policy, reference.eval()
