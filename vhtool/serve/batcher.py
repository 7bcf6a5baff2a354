"""Batching across requests: one bounded queue of texts, a preparing thread and a model thread (after TEI's router).

Every text of every request is one :class:`Entry`. Admission is per request and all-or-nothing
(:meth:`Batcher.reserve`): the texts admitted and not yet answered never exceed ``max_queued``; over it the
request is refused (the HTTP layer answers 503 + ``Retry-After``) instead of queueing without bound.

Two threads, one batch apart. The **preparing thread** cuts the next batch as soon as the hand-over slot is free:
it plans the waiting entries with the engine's own length-bucketed planning
(:func:`vhtool.models.scoring.plan_batches`, under ``max_batch_tokens`` padded tokens and ``max_batch_size``
texts), takes the planned batch that holds the oldest entry (similar lengths go together; no entry waits behind
newer ones for ever), and prepares it (padding, tensors, position ids, the copy to the device: the engine's
:meth:`~vhtool.models.scoring.Scorer.pad_batch`). The **model thread** only runs forwards: it takes the prepared
batch, runs it and answers its entries, and by then the next batch is usually prepared and waiting in the slot.
A batch is cut when the slot frees, i.e. while the one before it runs. Nothing waits for a batch to fill unless
``max_wait_s`` asks for it. Tokenisation and JSON happen before an entry is queued, on other threads.

Entries whose client went away are dropped before compute: while waiting, and again when the model thread takes
a prepared batch (if some of its entries went away meanwhile, the rest is prepared again without them, on the
model thread: rare, and it keeps every score what the same texts alone would get).

A batch that raises (preparing or computing) fails its own entries only; the threads go on with the next one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vhtool.models.scoring.plan import plan_batches

#: ``forward(prepared) -> (scores, per-token values or None)``: the engine's forward of one prepared batch.
ForwardFn = Callable[[Any], tuple[list[float], list[list[float]] | None]]
#: ``prepare(seqs) -> prepared``: everything before the forward (the engine's padding and tensors).
PrepareFn = Callable[[Sequence[list[int]]], Any]
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
    """The bounded queue, the preparing thread and the model thread.

    Args:
        forward: runs one prepared batch (the engine's :meth:`~vhtool.models.scoring.Scorer.forward_batch`).
        prepare: prepares a batch's token sequences for ``forward`` (the engine's
            :meth:`~vhtool.models.scoring.Scorer.pad_batch`); by default the sequences themselves.
        max_batch_tokens: padded tokens per batch.
        max_batch_size: texts per batch.
        max_queued: texts admitted and not yet answered, over all requests.
        max_wait_s: how long to wait for a batch to fill (0: never waits).
        on_batch: called on the model thread after each batch (metrics).
        on_drop: called with the number of entries dropped because their client went away.
    """

    def __init__(
        self,
        forward: ForwardFn,
        *,
        prepare: PrepareFn | None = None,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queued: int,
        max_wait_s: float = 0.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._forward = forward
        self._prepare: PrepareFn = prepare if prepare is not None else (lambda seqs: list(seqs))
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._cond = threading.Condition()
        self._pending: list[Entry] = []
        #: the hand-over slot: a prepared batch waiting for the model thread (entries, prepared, error)
        self._slot: tuple[list[Entry], Any, BaseException | None] | None = None
        self._preparing: list[Entry] = []
        self._running: list[Entry] = []
        self._reserved = 0
        self._flush = False
        self._stopping = False
        self._threads: list[threading.Thread] = []

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
            self._cond.notify_all()

    def cancel(self, entries: Sequence[Entry]) -> None:
        """Marks entries of a client that went away: those not yet computing are dropped before compute."""
        with self._cond:
            for e in entries:
                e.cancelled = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ the threads
    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._prepare_loop, name="vhtool-serve-prepare", daemon=True),
            threading.Thread(target=self._model_loop, name="vhtool-serve-model", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def flush(self) -> None:
        """From now on, never wait for a batch to fill (draining: answer what is queued as fast as possible)."""
        with self._cond:
            self._flush = True
            self._cond.notify_all()

    def abandon(self, error: BaseException) -> int:
        """Stops admitting and fails every entry not yet answered with ``error``: queued, prepared and computing.

        For a drain that ran out of time: every waiting request is answered (an error) instead of being cut off.
        A forward in progress is not interrupted; its results, when they come, go nowhere.

        Returns:
            How many live (not cancelled) entries were failed.
        """
        with self._cond:
            self._stopping = True
            waiting = self._pending + self._preparing + (self._slot[0] if self._slot is not None else [])
            self._pending, self._preparing, self._slot = [], [], None
            self._reserved = max(0, self._reserved - len(waiting))
            failed = [e for e in waiting + self._running if not e.cancelled]
            for e in failed:
                e.cancelled = True  # answered here: the model thread will not answer it again
            self._cond.notify_all()
        for e in failed:
            e.deliver(e, None, error)
        return len(failed)

    def stop(self, timeout: float | None = None) -> list[Entry]:
        """Stops admitting, lets the model thread finish its forward, and returns the entries it did not score."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cond:
            left = self._pending + (self._slot[0] if self._slot is not None else [])
            self._pending, self._slot = [], None
            return left

    def _drop(self, entries: list[Entry]) -> list[Entry]:
        """``entries`` without the cancelled ones, which are given back and counted (call with the lock held)."""
        kept = [e for e in entries if not e.cancelled]
        dropped = len(entries) - len(kept)
        if dropped:
            self._reserved = max(0, self._reserved - dropped)
            if self._on_drop is not None:
                self._on_drop(dropped)
        return kept

    def _ready(self, now: float) -> float | None:
        """None when a batch should be cut now; else how long to wait for it to fill."""
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

    def _prepare_loop(self) -> None:
        """The preparing thread: cut the next batch when the slot is free, prepare it, hand it over."""
        while True:
            with self._cond:
                while True:
                    self._pending = self._drop(self._pending)
                    if self._stopping:
                        return
                    if self._slot is None and self._pending:
                        wait = self._ready(time.perf_counter())
                        if wait is None:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                batch = self._preparing = self._cut()
            prepared: Any = None
            error: BaseException | None = None
            try:
                prepared = self._prepare([e.ids for e in batch])
            except Exception as exc:  # a batch that cannot be prepared fails its own requests only
                error = exc
            with self._cond:
                if not self._preparing:  # abandon() answered them meanwhile
                    return
                self._preparing = []
                if self._stopping:  # stop() came meanwhile: hand the entries back, unscored
                    self._pending = batch + self._pending
                    return
                self._slot = (batch, prepared, error)
                self._cond.notify_all()

    def _model_loop(self) -> None:
        """The model thread: take the prepared batch, run its forward, answer its entries; nothing else."""
        while True:
            with self._cond:
                while self._slot is None and not self._stopping:
                    self._cond.wait()
                if self._stopping or self._slot is None:
                    return
                batch, prepared, error = self._slot
                self._slot = None
                live = self._drop(batch)
                self._running = live
                self._cond.notify_all()  # the slot is free: the preparing thread cuts the next batch now
            if not live:
                continue
            if len(live) < len(batch) and error is None:
                try:  # some clients went away after their batch was prepared: prepare the rest without them
                    prepared = self._prepare([e.ids for e in live])
                except Exception as exc:
                    error = exc
            self._run_batch(live, prepared, error)
            with self._cond:
                self._running = []

    def _run_batch(self, batch: list[Entry], prepared: Any, error: BaseException | None) -> None:
        seqs = [e.ids for e in batch]
        start = time.perf_counter()
        scores: list[float] = []
        values: list[list[float]] | None = None
        if error is None:
            try:
                scores, values = self._forward(prepared)
            except Exception as exc:  # a failing batch fails its own requests; the server goes on
                error = exc
        end = time.perf_counter()
        with self._cond:
            self._reserved = max(0, self._reserved - len(batch))
            answer = [not e.cancelled for e in batch]  # abandon() may have answered them already
        for j, e in enumerate(batch):
            if not answer[j]:
                continue
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


__all__ = ["BatchStats", "Batcher", "Entry", "ForwardFn", "PrepareFn"]
