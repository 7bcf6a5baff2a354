"""Block structure from tensor names alone: the repeated-block container and the embedding tensors."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vhtool.errors import InputError

_EMBED = re.compile(r"(^|\.)(embed(?!_out)\w*|wte|wpe|shared|word_embeddings\w*|project_in)(\.|$)")


def is_embedding_name(name: str) -> bool:
    """True for input-side embedding tensors (token/position embeddings, T5 ``shared``, OPT ``project_in``).

    Output-side tensors defined before the blocks in some models (OPT's ``project_out`` and final
    norm) are deliberately not embeddings: sharing them would freeze the policy's output path.
    """
    return bool(_EMBED.search(name))


def embedding_after_blocks(name: str, pattern: str) -> bool:
    """True for a later stack's embeddings (a T5/BART decoder's when the container is the encoder's blocks)."""
    return "encoder" in pattern and "decoder" in name


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching tensor names inside block ``{layer}`` of ``pattern`` (group 1 is the index)."""
    if "{layer}" not in pattern:
        raise InputError(f"pattern {pattern!r} must contain '{{layer}}', e.g. 'model.layers.{{layer}}'.")
    return re.compile(r"(?:^|\.)" + re.escape(pattern).replace(re.escape("{layer}"), r"(\d+)") + r"\.")


@dataclass(frozen=True)
class Blocks:
    """A block container found in tensor names: ``pattern`` like ``model.layers.{layer}`` and its block count."""

    pattern: str
    num_blocks: int


def find_blocks(names: Iterable[str], pattern: str | None = None) -> Blocks:
    """Finds the repeated-block container from tensor names (or checks ``pattern`` against them).

    The container is the ``<prefix>.<i>.`` family with the most tensors; for encoder-decoders whose
    two stacks are the same size, the encoder (first in the forward pass) wins.
    """
    names = list(names)
    if pattern is not None:
        rx = pattern_regex(pattern)
        idx = {int(m.group(1)) for n in names if (m := rx.search(n))}
        if not idx:
            raise InputError(f"pattern {pattern!r} matches no tensor of the checkpoint (check for a typo).")
        return Blocks(pattern=pattern, num_blocks=max(idx) + 1)
    families: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        for i, part in enumerate(parts[:-1]):
            if part.isdigit() and i > 0:
                prefix = ".".join(parts[:i])
                if any(p.isdigit() for p in parts[:i]):
                    break  # nested list inside a block (e.g. T5's block.0.layer.1): not a container
                families.setdefault(prefix, set()).add(int(part))
                counts[prefix] = counts.get(prefix, 0) + 1
                break
    if not families:
        raise InputError("cannot find repeated blocks in the tensor names; pass --pattern '<path>.{layer}'.")
    best = max(counts.values())
    order = sorted(families, key=lambda p: (0 if "encoder" in p else 1, -counts[p]))
    prefix = next(p for p in order if counts[p] * 2 >= best)
    return Blocks(pattern=f"{prefix}.{{layer}}", num_blocks=max(families[prefix]) + 1)


def shared_tensor_names(names: Iterable[str], blocks: Blocks, num_shared_layers: int) -> list[str]:
    """The embedding tensors and every tensor of blocks ``0..N-1``, sorted."""
    if num_shared_layers < 0 or num_shared_layers > blocks.num_blocks:
        raise InputError(
            f"--shared-layers {num_shared_layers} is out of range: found {blocks.num_blocks} blocks "
            f"({blocks.pattern}); use 0..{blocks.num_blocks}."
        )
    rx = pattern_regex(blocks.pattern)
    shared = []
    for n in names:
        m = rx.search(n)
        if m is not None:
            if int(m.group(1)) < num_shared_layers:
                shared.append(n)
        elif is_embedding_name(n) and not embedding_after_blocks(n, blocks.pattern):
            shared.append(n)
    return sorted(shared)
