"""What an evaluation gives back: one :class:`PairResult` per record, and an :class:`EvalSummary`.

How a record counts: it is **correct** when the chosen answer's score is strictly greater than every rejected
answer's (RewardBench's ``chosen > rejected``; for best-of-N, RewardBench 2's "chosen beats all"). A **tie** (the
chosen score equals the best rejected one, e.g. two answers that tokenise alike) is not correct: accuracy is
``correct / records`` with ties in the denominator, and ties are counted apart so that the reader sees them. A record
with a non-finite score is not correct either (``margin`` is then ``null``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vhtool.models.evaluate.stats import Comparison


@dataclass(frozen=True)
class PairResult:
    """One scored preference record."""

    index: int
    chosen: float
    rejected: tuple[float, ...]
    best_of_n: bool = False
    subset: str | None = None
    truncated: bool = False

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.chosen, *self.rejected))

    @property
    def best_rejected(self) -> float:
        return max(self.rejected)

    @property
    def margin(self) -> float:
        """``chosen - max(rejected)`` (``nan`` when a score is not finite)."""
        return self.chosen - self.best_rejected if self.finite else math.nan

    @property
    def correct(self) -> bool:
        return self.finite and self.chosen > self.best_rejected

    @property
    def tie(self) -> bool:
        return self.finite and self.chosen == self.best_rejected

    def to_json(self) -> dict[str, Any]:
        """The JSONL line: ``index``, ``chosen``, ``rejected`` (a number, or a list for best-of-N), ``margin``,
        ``correct``, ``tie``, ``subset`` (+ ``truncated`` when ``--max-length`` cut an answer)."""
        rejected: Any = [_num(x) for x in self.rejected] if self.best_of_n else _num(self.rejected[0])
        doc: dict[str, Any] = {
            "index": self.index,
            "chosen": _num(self.chosen),
            "rejected": rejected,
            "margin": _num(self.margin),
            "correct": self.correct,
            "tie": self.tie,
            "subset": self.subset,
        }
        if self.truncated:
            doc["truncated"] = True
        return doc


@dataclass(frozen=True)
class SubsetAccuracy:
    name: str
    count: int
    correct: int
    ties: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "correct": self.correct, "ties": self.ties, "accuracy": self.accuracy}


@dataclass(frozen=True)
class Gate:
    """The pass/fail rules of a run: ``--require-accuracy`` (``--conservative``) and ``--require-no-regression``."""

    require_accuracy: float | None = None
    conservative: bool = False
    require_no_regression: bool = False


@dataclass(frozen=True)
class EvalSummary:
    """Statistics of one evaluation and what was used to compute them."""

    checkpoint: str
    input: str
    count: int
    skipped: int
    correct: int
    ties: int
    nonfinite: int
    accuracy: float | None
    interval: tuple[float, float] | None
    subsets: tuple[SubsetAccuracy, ...]
    margin_mean: float | None
    margin_std: float | None
    margin_min: float | None
    margin_max: float | None
    answers: int
    sequences: int
    tokens: int
    padded_tokens: int
    truncated: int
    batches: int
    best_of_n: int
    kinds: tuple[tuple[str, int], ...]
    seconds: float
    load_seconds: float
    head: str
    head_reason: str
    join: str
    dtype: str
    device: str
    padding_side: str
    forward: str
    ranks: int = 1
    notes: tuple[str, ...] = ()
    output: str | None = None
    histogram: tuple[tuple[float, float, int], ...] = ()
    comparison: Comparison | None = None
    gate: Gate = field(default_factory=Gate)
    #: tokens actually run through the model (``tokens`` less the shared prompts the prompt cache ran once)
    forwarded_tokens: int = 0
    #: ``on``, or ``off: <why>``; with ``cached_prompts`` prompts run once for ``cached_answers`` answers
    prompt_cache: str = "off"
    cached_prompts: int = 0
    cached_answers: int = 0

    @property
    def mean_over_subsets(self) -> float | None:
        """The unweighted mean of the subsets' accuracies (each subset counts once, whatever its size)."""
        return sum(s.accuracy for s in self.subsets) / len(self.subsets) if self.subsets else None

    @property
    def pairs_per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def gated_value(self) -> float | None:
        """What ``--require-accuracy`` compares: the accuracy, or its interval's lower bound (``--conservative``)."""
        if self.gate.conservative:
            return self.interval[0] if self.interval is not None else None
        return self.accuracy

    def gate_failures(self) -> list[str]:
        """Why the run fails its gate (empty: it passes)."""
        problems: list[str] = []
        want = self.gate.require_accuracy
        if want is not None:
            value = self.gated_value
            what = "the 95% lower bound of accuracy" if self.gate.conservative else "accuracy"
            if value is None:
                problems.append(f"no record was scored, so {what} is undefined (--require-accuracy {want:g})")
            elif value < want:
                problems.append(f"{what} {value:.4f} is below --require-accuracy {want:g}")
        c = self.comparison
        if self.gate.require_no_regression and c is not None and c.worse:
            problems.append(
                f"significantly worse than {c.previous}: {c.broke} records broke, {c.fixed} fixed "
                f"(exact McNemar p = {c.p_value:.3g} < {c.alpha:g})"
            )
        return problems

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-able dict (statistics are ``null`` when nothing was scored)."""
        lo_hi = {"low": self.interval[0], "high": self.interval[1], "level": 0.95} if self.interval else None
        gate: dict[str, Any] = {
            "require_accuracy": self.gate.require_accuracy,
            "conservative": self.gate.conservative,
            "require_no_regression": self.gate.require_no_regression,
            "compared_value": self.gated_value,
            "passed": not self.gate_failures(),
            "failures": self.gate_failures(),
        }
        return {
            "checkpoint": self.checkpoint,
            "input": self.input,
            "count": self.count,
            "skipped": self.skipped,
            "correct": self.correct,
            "ties": self.ties,
            "ties_count_as": "incorrect",
            "nonfinite": self.nonfinite,
            "accuracy": self.accuracy,
            "interval": lo_hi,
            "subsets": {s.name: s.to_json() for s in self.subsets},
            "mean_over_subsets": self.mean_over_subsets,
            "margin": {
                "mean": self.margin_mean,
                "std": self.margin_std,
                "min": self.margin_min,
                "max": self.margin_max,
                "histogram": [{"from": lo, "to": hi, "count": c} for lo, hi, c in self.histogram],
            },
            "best_of_n": self.best_of_n,
            "formats": dict(self.kinds),
            "answers": self.answers,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "forwarded_tokens": self.forwarded_tokens,
            "prompt_cache": {
                "state": self.prompt_cache,
                "prompts": self.cached_prompts,
                "answers": self.cached_answers,
                "tokens_saved": self.tokens - self.forwarded_tokens,
            },
            "truncated": self.truncated,
            "batches": self.batches,
            "seconds": round(self.seconds, 4),
            "load_seconds": round(self.load_seconds, 4),
            "pairs_per_s": round(self.pairs_per_s, 2),
            "head": self.head,
            "head_reason": self.head_reason,
            "join": self.join,
            "dtype": self.dtype,
            "device": self.device,
            "padding_side": self.padding_side,
            "forward": self.forward,
            "ranks": self.ranks,
            "output": self.output,
            "notes": list(self.notes),
            "compare": self.comparison.to_json() if self.comparison is not None else None,
            "gate": gate,
        }


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


__all__ = ["EvalSummary", "Gate", "PairResult", "SubsetAccuracy"]
