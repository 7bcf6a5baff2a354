"""Batch planning: records sorted by length and packed under a padded-token budget; input read in windows.

Inside a window the records are sorted longest first and packed into batches of at most ``max_batch_tokens``
padded tokens (and ``batch_size`` records), a record joining a batch only when it is padded by at most 10% of
the batch width, so little compute goes to padding. The distributed run relies on the plan being a pure
function of the lengths: every rank computes the same plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

MAX_PADDING = 0.1

T = TypeVar("T")


def plan_batches(
    lengths: Sequence[int], *, max_batch_tokens: int, batch_size: int | None, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Groups positions into batches: longest first, each under ``max_batch_tokens`` padded tokens.

    Args:
        lengths: token count of each record.
        max_batch_tokens: budget of ``records x longest`` per batch; a record longer than it goes alone.
        batch_size: at most this many records per batch (``None``: no limit).
        max_padding: a record joins a batch only if it is padded by at most this fraction of the batch
            width; with few records spread over many lengths this keeps batches narrow instead of big.

    Returns:
        Lists of positions into ``lengths``; every position appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for k in order:
        n = lengths[k]  # descending: the batch's first record sets its width
        full = batch_size is not None and len(current) >= batch_size
        if current and (full or width * (len(current) + 1) > max_batch_tokens or n < width * (1 - max_padding)):
            batches.append(current)
            current = []
        if not current:
            width = n
        current.append(k)
    if current:
        batches.append(current)
    return batches


def windows(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Groups ``items`` into consecutive lists of ``size`` (the last one may be shorter), lazily.

    Args:
        items: the records, in input order.
        size: records per window (at least 1).
    """
    window: list[T] = []
    for item in items:
        window.append(item)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


__all__ = ["MAX_PADDING", "plan_batches", "windows"]
