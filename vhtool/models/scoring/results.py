"""What a scoring run gives back: one :class:`ScoredRecord` per record (or a :class:`SkippedRecord`), a summary.

JSON has no NaN/Infinity: non-finite numbers are written as ``null`` (see :meth:`ScoredRecord.to_json`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vhtool.errors import InputError


@dataclass(frozen=True)
class ScoredRecord:
    """One scored input record. ``score`` is ``nan``/``inf`` when the model produced that."""

    index: int
    score: float
    tokens: int
    truncated: bool = False
    values: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSONL line: ``index``, ``score``, ``tokens`` (+ ``truncated``, ``values``, ``nonfinite``).

        JSON has no NaN/Infinity: a non-finite score is written as ``null`` with ``"nonfinite": "nan"``
        (or ``"inf"``/``"-inf"``); non-finite per-token values are written as ``null``.
        """
        doc: dict[str, Any] = {"index": self.index, "score": _json_float(self.score), "tokens": self.tokens}
        if not math.isfinite(self.score):
            doc["nonfinite"] = str(self.score)
        if self.truncated:
            doc["truncated"] = True
        if self.values is not None:
            doc["values"] = [_json_float(v) for v in self.values]
        return doc


class BadRecordError(InputError):
    """A record that cannot be scored, with ``on_error="fail"`` (exit 2); the message names its line."""

    def __init__(self, message: str, *, index: int, line: int) -> None:
        super().__init__(message)
        self.index = index
        self.line = line


@dataclass(frozen=True)
class SkippedRecord:
    """A record that could not be scored (``--on-error skip``)."""

    index: int
    line: int
    reason: str

    def message(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class ScoreSummary:
    """Statistics of one scoring run (over the finite scores) and what was used to compute them."""

    checkpoint: str
    count: int
    skipped: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    nan_count: int
    inf_count: int
    tokens: int
    padded_tokens: int
    truncated: int
    batches: int
    seconds: float
    load_seconds: float
    tokens_per_s: float
    records_per_s: float
    head: str
    head_reason: str
    join: str
    joined_records: int
    input_format: str
    dtype: str
    device: str
    padding_side: str
    forward: str
    output: str | None = None
    notes: tuple[str, ...] = ()
    ranks: int = 1
    #: ``(from, to, count)`` rows of the finite scores, at most 10, over the occupied range.
    histogram: tuple[tuple[float, float, int], ...] = ()

    @property
    def padding_fraction(self) -> float:
        return 0.0 if self.padded_tokens == 0 else 1.0 - self.tokens / self.padded_tokens

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-able dict (statistics are ``null`` when nothing finite was scored)."""
        return {
            "checkpoint": self.checkpoint,
            "count": self.count,
            "skipped": self.skipped,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "nan_count": self.nan_count,
            "inf_count": self.inf_count,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "padding_fraction": round(self.padding_fraction, 4),
            "truncated": self.truncated,
            "batches": self.batches,
            "seconds": round(self.seconds, 4),
            "load_seconds": round(self.load_seconds, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "records_per_s": round(self.records_per_s, 2),
            "head": self.head,
            "head_reason": self.head_reason,
            "join": self.join,
            "joined_records": self.joined_records,
            "input_format": self.input_format,
            "dtype": self.dtype,
            "device": self.device,
            "padding_side": self.padding_side,
            "forward": self.forward,
            "output": self.output,
            "ranks": self.ranks,
            "notes": list(self.notes),
            "histogram": [{"from": lo, "to": hi, "count": c} for lo, hi, c in self.histogram],
        }


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


__all__ = ["BadRecordError", "ScoreSummary", "ScoredRecord", "SkippedRecord"]
