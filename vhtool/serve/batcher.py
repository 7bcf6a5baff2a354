"""Batching across requests: one bounded queue of texts and one model worker thread (after TEI's router).

Every text of every request is one :class:`Entry`. Admission is per request and all-or-nothing
(:meth:`Batcher.reserve`): the texts admitted and not yet answered never exceed ``max_queued``; over it the
request is refused (the HTTP layer answers 503 + ``Retry-After``) instead of queueing without bound.

The worker thread cuts the next batch the moment it is free: it plans the waiting entries with the engine's own
length-bucketed planning (:func:`vhtool.models.scoring.plan_batches`, under ``max_batch_tokens`` padded tokens
and ``max_batch_size`` texts) and runs the batch that holds the oldest entry, so similar lengths go together and
no entry waits behind newer ones for ever. It waits for a batch to fill only when ``max_wait_s`` asks for it.
Entries whose client went away are dropped before compute. Tokenisation and JSON happen before an entry is
queued, on other threads: the worker thread only pads and runs the model.

A batch that raises fails its own entries only; the worker goes on with the next one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vhtool.models.scoring.plan import plan_batches

#: ``score_batch(seqs) -> (scores, per-token values or None)``: the engine's forward of one padded batch.
ScoreFn = Callable[[Sequence[list[int]]], tuple[list[float], list[list[float]] | None]]
#: ``deliver(entry, result, error)``: called on the worker thread when an entry is scored (or failed).
DeliverFn = Callable[["Entry", "tuple[float, list[float] | None] | None", "BaseException | None"], None]


@dataclass(eq=False)
class Entry:
    """One text waiting to be scored: its token ids and where its answer goes."""

    ids: list[int]
    deliver: DeliverFn
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    tag: Any = None


@dataclass
class BatchStats:
    """What one batch did, for metrics: texts, real and padded tokens, seconds queued (oldest) and computing."""

    texts: int
    tokens: int
    padded_tokens: int
    queue_seconds: list[float]
    compute_seconds: float
    failed: bool


class Batcher:
    """The bounded queue and the model worker.

    Args:
        score: runs one padded batch (the engine's :meth:`~vhtool.models.scoring.Scorer.score_batch`).
        max_batch_tokens: padded tokens per batch.
        max_batch_size: texts per batch.
        max_queued: texts admitted and not yet answered, over all requests.
        max_wait_s: how long the worker may wait for a batch to fill (0: it never waits).
        on_batch: called on the worker thread after each batch (metrics).
        on_drop: called with the number of entries dropped because their client went away.
    """

    def __init__(
        self,
        score: ScoreFn,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queued: int,
        max_wait_s: float = 0.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._score = score
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._cond = threading.Condition()
        self._pending: list[Entry] = []
        self._reserved = 0
        self._flush = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ admission (any thread)
    @property
    def reserved(self) -> int:
        """Texts admitted and not yet answered (the queue depth the limit applies to)."""
        return self._reserved

    def reserve(self, n: int) -> bool:
        """Admits ``n`` texts if the queue has room for all of them; False (nothing admitted) otherwise."""
        with self._cond:
            if self._stopping or self._reserved + n > self.max_queued:
                return False
            self._reserved += n
            return True

    def release(self, n: int) -> None:
        """Gives back ``n`` admitted texts that will not be queued (the request failed before scoring)."""
        with self._cond:
            self._reserved = max(0, self._reserved - n)

    def submit(self, entries: Sequence[Entry]) -> None:
        """Queues admitted entries (their texts were reserved)."""
        with self._cond:
            self._pending.extend(entries)
            self._cond.notify()

    def cancel(self, entries: Sequence[Entry]) -> None:
        """Marks entries of a client that went away: those not yet in a batch are dropped before compute."""
        with self._cond:
            for e in entries:
                e.cancelled = True
            self._cond.notify()

    # ------------------------------------------------------------------ the worker
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vhtool-serve-model", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """From now on, never wait for a batch to fill (draining: answer what is queued as fast as possible)."""
        with self._cond:
            self._flush = True
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> list[Entry]:
        """Stops admitting, lets the worker finish its batch, and returns the entries it did not score."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left, self._pending = self._pending, []
            return left

    def _drop_cancelled(self) -> None:
        kept = [e for e in self._pending if not e.cancelled]
        dropped = len(self._pending) - len(kept)
        if dropped:
            self._pending = kept
            self._reserved = max(0, self._reserved - dropped)
            if self._on_drop is not None:
                self._on_drop(dropped)

    def _ready(self, now: float) -> float | None:
        """None when a batch should run now; else how long to wait for it to fill."""
        if self._flush or self._stopping or self.max_wait_s <= 0:
            return None
        if len(self._pending) >= self.max_batch_size:
            return None
        if sum(len(e.ids) for e in self._pending) >= self.max_batch_tokens:
            return None
        left = self._pending[0].enqueued + self.max_wait_s - now
        return None if left <= 0 else left

    def _cut(self) -> list[Entry]:
        """The next batch: the engine's plan over everything waiting; the planned batch holding the oldest entry."""
        plan = plan_batches(
            [len(e.ids) for e in self._pending],
            max_batch_tokens=self.max_batch_tokens,
            batch_size=self.max_batch_size,
        )
        chosen = next(b for b in plan if 0 in b)
        taken = set(chosen)
        batch = [self._pending[k] for k in chosen]
        self._pending = [e for k, e in enumerate(self._pending) if k not in taken]
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    self._drop_cancelled()
                    if self._stopping:
                        return
                    if self._pending:
                        wait = self._ready(time.perf_counter())
                        if wait is None:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                batch = self._cut()
            self._run_batch(batch)

    def _run_batch(self, batch: list[Entry]) -> None:
        seqs = [e.ids for e in batch]
        start = time.perf_counter()
        error: BaseException | None = None
        scores: list[float] = []
        values: list[list[float]] | None = None
        try:
            scores, values = self._score(seqs)
        except Exception as exc:  # a failing batch fails its own requests; the server goes on
            error = exc
        end = time.perf_counter()
        with self._cond:
            self._reserved = max(0, self._reserved - len(batch))
        for j, e in enumerate(batch):
            if error is not None:
                e.deliver(e, None, error)
            else:
                e.deliver(e, (scores[j], values[j] if values is not None else None), None)
        if self._on_batch is not None:
            width = max(len(s) for s in seqs)
            self._on_batch(
                BatchStats(
                    texts=len(batch),
                    tokens=sum(len(s) for s in seqs),
                    padded_tokens=width * len(batch),
                    queue_seconds=[start - e.enqueued for e in batch],
                    compute_seconds=end - start,
                    failed=error is not None,
                )
            )


__all__ = ["BatchStats", "Batcher", "Entry"]
