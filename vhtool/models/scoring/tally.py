"""Counting a run: records written in input order, window by window, and summed up into a :class:`ScoreSummary`.

Statistics are running (Welford) over the finite scores, and the histogram's bins grow by doubling: memory
is constant in the number of records.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from vhtool.models.scoring.prepare import Prepared
from vhtool.models.scoring.results import ScoredRecord, ScoreSummary, SkippedRecord

if TYPE_CHECKING:
    from vhtool.models.scoring.engine import Scorer

#: Scores of one window: ``{position in the window's good records: (score, per-token values or None)}``.
Results = dict[int, tuple[float, "list[float] | None"]]


class _Stats:
    """Running statistics (Welford) over finite scores: constant memory in the number of records."""

    def __init__(self) -> None:
        self.count = 0
        self.finite = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.nan = 0
        self.inf = 0

    def add(self, x: float) -> None:
        self.count += 1
        if math.isnan(x):
            self.nan += 1
            return
        if math.isinf(x):
            self.inf += 1
            return
        self.finite += 1
        delta = x - self.mean
        self.mean += delta / self.finite
        self.m2 += delta * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)


class _Histogram:
    """Counts of finite scores in equal-width bins, in constant memory.

    The first :data:`_SEED` scores fix the range; a later score outside it doubles the range (merging
    neighbouring bins) until it fits, so every count is exact for its bin whatever the order of the scores.
    """

    _BINS = 40
    _SEED = 1024

    def __init__(self) -> None:
        self.seed: list[float] = []
        self.lo = 0.0
        self.width = 0.0
        self.counts = [0] * self._BINS

    def add(self, x: float) -> None:
        if self.width == 0.0:
            self.seed.append(x)
            if len(self.seed) >= self._SEED:
                self._start()
            return
        self._place(x)

    def _start(self) -> None:
        lo, hi = min(self.seed), max(self.seed)
        self.lo = lo
        self.width = (hi - lo) / self._BINS if hi > lo else max(abs(lo), 1.0) * 1e-6
        seed, self.seed = self.seed, []
        for x in seed:
            self._place(x)

    def _place(self, x: float) -> None:
        n = self._BINS
        while x < self.lo:  # double the range downwards: old bin i -> n/2 + i//2
            merged = [0] * n
            for i, c in enumerate(self.counts):
                merged[n // 2 + i // 2] += c
            self.lo -= n * self.width
            self.width *= 2
            self.counts = merged
        while x >= self.lo + n * self.width:  # double it upwards: old bin i -> i//2
            merged = [0] * n
            for i, c in enumerate(self.counts):
                merged[i // 2] += c
            self.width *= 2
            self.counts = merged
        self.counts[min(int((x - self.lo) / self.width), n - 1)] += 1

    def bins(self, max_bins: int = 10) -> tuple[tuple[float, float, int], ...]:
        """``(from, to, count)`` rows over the occupied range, at most ``max_bins`` of them."""
        if self.width == 0.0:
            if not self.seed:
                return ()
            self._start()
        occupied = [i for i, c in enumerate(self.counts) if c]
        first, last = occupied[0], occupied[-1]
        counts = self.counts[first : last + 1]
        group = -(-len(counts) // max_bins)
        rows = []
        for k in range(0, len(counts), group):
            lo = self.lo + (first + k) * self.width
            hi = self.lo + (first + min(k + group, len(counts))) * self.width
            rows.append((lo, hi, sum(counts[k : k + group])))
        return tuple(rows)


class Tally:
    """The records of a run in input order, window by window: writes them, counts them, and sums them up."""

    def __init__(self) -> None:
        self.stats = _Stats()
        self.histogram = _Histogram()
        self.tokens = self.padded = self.truncated = self.batches = self.skipped = self.joined = 0
        self.t0 = time.perf_counter()

    def add_window(
        self,
        prepared: Sequence[Prepared],
        lengths: Sequence[int],
        plan: Sequence[list[int]],
        results: Results,
        *,
        sink: TextIO | None,
        on_record: Callable[[ScoredRecord], None] | None,
        on_skip: Callable[[SkippedRecord], None] | None,
        progress: Callable[[int, int], None] | None,
        scored_progress: bool = True,
    ) -> None:
        """Writes a window's records in input order and counts them.

        ``progress`` gets the records finished and their tokens: all of them, or only the skipped ones when
        ``scored_progress`` is false (the scored ones were reported batch by batch as they were scored).
        """
        self.batches += len(plan)
        self.padded += sum(len(b) * max(lengths[k] for k in b) for b in plan)
        done = done_tokens = 0
        skipped_before = self.skipped
        k = 0
        for p in prepared:
            if p.error is not None:
                self.skipped += 1
                if on_skip is not None:
                    on_skip(SkippedRecord(p.item.index, p.item.line, p.error))
                done += 1
                continue
            score, vals = results[k]
            n = lengths[k]
            k += 1
            record = ScoredRecord(
                index=p.item.index,
                score=float(score),
                tokens=n,
                truncated=p.truncated,
                values=tuple(vals) if vals is not None else None,
            )
            self.stats.add(record.score)
            if math.isfinite(record.score):
                self.histogram.add(record.score)
            self.tokens += n
            done_tokens += n
            self.truncated += int(p.truncated)
            self.joined += int(p.joined)
            if sink is not None:
                sink.write(json.dumps(record.to_json(), allow_nan=False) + "\n")
            if on_record is not None:
                on_record(record)
            done += 1
        if not scored_progress:
            done, done_tokens = self.skipped - skipped_before, 0
        if progress is not None and done:
            progress(done, done_tokens)

    def summary(self, scorer: Scorer, fmt: str, *, ranks: int = 1) -> ScoreSummary:
        seconds = time.perf_counter() - self.t0
        stats = self.stats
        have = stats.finite > 0
        return ScoreSummary(
            checkpoint=scorer.checkpoint,
            count=stats.count,
            skipped=self.skipped,
            mean=stats.mean if have else None,
            std=math.sqrt(stats.m2 / stats.finite) if have else None,
            min=stats.min if have else None,
            max=stats.max if have else None,
            nan_count=stats.nan,
            inf_count=stats.inf,
            tokens=self.tokens,
            padded_tokens=self.padded,
            truncated=self.truncated,
            batches=self.batches,
            seconds=seconds,
            load_seconds=scorer.load_seconds,
            tokens_per_s=self.tokens / seconds if seconds > 0 else 0.0,
            records_per_s=stats.count / seconds if seconds > 0 else 0.0,
            head=scorer.head,
            head_reason=scorer.head_reason,
            join=scorer.join,
            joined_records=self.joined,
            input_format=fmt,
            dtype=scorer.compute_dtype,
            device=scorer.device,
            padding_side=scorer.padding_side,
            forward=scorer.forward_kind,
            notes=tuple(scorer.notes),
            ranks=ranks,
            histogram=self.histogram.bins(),
        )


__all__ = ["Results", "Tally"]
