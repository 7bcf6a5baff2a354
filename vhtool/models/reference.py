"""Frozen reference models that share their first layers with the policy, without copying them even briefly."""

from __future__ import annotations

import copy
import os
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

    from vhtool.checkpoint.layout import open_checkpoint
    from vhtool.models.value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

    ref_ckpt = open_checkpoint(reference_dir)
    manifest = ref_ckpt.manifest
    info = manifest.reference if manifest is not None else None
    if manifest is None or manifest.role != "reference" or info is None:
        raise InputError(f"{reference_dir}: not a vhtool reference (vhtool.json has no role 'reference').")
    cls = AutoModelForSeq2SeqLMWithValueHead if ref_ckpt.is_encoder_decoder else AutoModelForCausalLMWithValueHead
    policy = cls.from_pretrained(str(policy_dir), **kwargs)
    params = dict(policy.named_parameters())

    def param_name(tensor: str) -> str:
        return tensor if tensor.startswith("v_head.") else f"pretrained_model.{tensor}"

    def read_stored(tensor: str, into: torch.Tensor | None = None) -> torch.Tensor:
        """A tensor of the reference checkpoint, read straight into ``into``'s memory when the dtype matches."""
        where = ref_ckpt.tensors.get(tensor)
        if where is None:
            raise InputError(f"{reference_dir}: vhtool.json lists tensor {tensor!r}; no weight file holds it.")
        path, header = ref_ckpt.weight_path(where.file), ref_ckpt.headers[where.file]
        out: torch.Tensor = read_tensor(path, header, tensor, into=into)
        return out

    shared_tensors = list(info.shared_tensors or [])
    shared = [param_name(n) for n in shared_tensors]
    missing = [n for n in shared if n not in params]
    if missing:
        raise InputError(f"{reference_dir}: shared tensor {missing[0]!r} is not a parameter of the policy.")
    # Drift check, one tensor at a time: the policy's shared tensors must equal the reference's stored copies.
    for tensor in shared_tensors:
        stored = read_stored(tensor)
        mine = params[param_name(tensor)].detach()
        if stored.shape != mine.shape or not torch.equal(stored.to(mine.dtype), mine.cpu()):
            raise InputError(
                f"the policy's shared tensor {tensor!r} differs from the reference's copy: the policy changed after "
                "`vhtool make-reference`; make a new reference from the current policy."
            )
        del stored
    # The deep copy reuses shared parameters and gets *uninitialised* stand-ins for the others, so the
    # policy's values are never copied only to be overwritten: the reference's own bytes are read into them.
    shared_set = set(shared)
    memo: dict[int, Any] = {}
    for name, p in params.items():
        if name in shared_set:
            memo[id(p)] = p
        elif id(p) not in memo:
            memo[id(p)] = nn.Parameter(torch.empty_like(p), requires_grad=False)
    reference = copy.deepcopy(policy, memo)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name in shared_set:
                continue
            tensor = name[len("pretrained_model.") :] if name.startswith("pretrained_model.") else name
            if tensor in ref_ckpt.tensors:
                read_stored(tensor, into=p)
            else:  # tied or not saved (e.g. an LM head tied to unshared embeddings): the policy's value is the truth
                p.copy_(params[name])
    for n in shared:
        params[n].requires_grad_(False)
    for p in reference.parameters():
        p.requires_grad_(False)
    setattr(reference, "shared_parameter_names", shared)  # noqa: B010
    return policy, reference.eval()


_TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def read_tensor(path: Path, header: Any, name: str, *, into: Any = None) -> Any:
    """Reads one tensor of a safetensors file with ``pread`` (no mmap, so no file pages held in RSS).

    When ``into`` (a contiguous CPU tensor of the same dtype and shape) is given, the bytes land
    directly in its memory; otherwise a new tensor is returned. Other cases convert through a copy.
    """
    import torch

    info = header.tensors[name]
    dtype = getattr(torch, _TORCH_DTYPES.get(info.dtype, ""), None)
    if dtype is None:
        raise InputError(f"{path}: tensor {name!r} has dtype {info.dtype}, which vhtool cannot load.")
    direct = (
        into is not None
        and into.dtype == dtype
        and tuple(into.shape) == info.shape
        and into.device.type == "cpu"
        and into.is_contiguous()
    )
    target = into if direct else torch.empty(info.shape, dtype=dtype)
    buf: Any = target.view(torch.uint8).reshape(-1).numpy() if target.numel() else None
    if buf is not None:
        with open(path, "rb", buffering=0) as fh:
            view = memoryview(buf).cast("B")
            done = 0
            while done < info.nbytes:
                n = os.preadv(fh.fileno(), [view[done:]], header.data_start + info.begin + done)
                if n <= 0:
                    raise InputError(f"{path}: file ended inside tensor {name!r}.")
                done += n
    if into is not None and not direct:
        into.copy_(target.to(dtype=into.dtype).reshape(into.shape))
        return into
    return target
