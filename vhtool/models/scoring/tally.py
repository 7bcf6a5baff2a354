"""Counting a run: records written in input order, window by window, and summed up into a :class:`ScoreSummary`.

Statistics are running (Welford) over the finite scores: memory is constant in the number of records.
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


class Tally:
    """The records of a run in input order, window by window: writes them, counts them, and sums them up."""

    def __init__(self) -> None:
        self.stats = _Stats()
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
        progress: Callable[[int], None] | None,
    ) -> None:
        self.batches += len(plan)
        self.padded += sum(len(b) * max(lengths[k] for k in b) for b in plan)
        done = 0
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
            self.tokens += n
            self.truncated += int(p.truncated)
            self.joined += int(p.joined)
            if sink is not None:
                sink.write(json.dumps(record.to_json(), allow_nan=False) + "\n")
            if on_record is not None:
                on_record(record)
            done += 1
        if progress is not None and done:
            progress(done)

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
        )


__all__ = ["Results", "Tally"]
