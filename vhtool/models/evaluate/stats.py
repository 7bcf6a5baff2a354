"""The statistics of an evaluation: a Wilson interval for accuracy, and an exact McNemar test between two runs.

Both are closed forms on counts (no SciPy): the Wilson score interval (Wilson 1927), which stays inside [0, 1]
and behaves at accuracies near 0 or 1 where the normal approximation does not; and McNemar's exact test, a
two-sided binomial test on the discordant pairs (records one model gets right and the other wrong).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.errors import InputError

#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes / n`` (``None`` when ``n`` is 0).

    Args:
        successes: the number of correct records.
        n: the number of records.
        z: the normal quantile (default: 95%).
    """
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(broke: int, fixed: int) -> float:
    """Two-sided exact McNemar p-value for ``broke`` (right before, wrong now) and ``fixed`` (the reverse) records.

    Under "no difference" each discordant record is a fair coin: ``p = min(1, 2 * P[X <= min(b, c)])`` with
    ``X ~ Binomial(b + c, 1/2)``; 1.0 when there is no discordant record.
    """
    n = broke + fixed
    if n == 0:
        return 1.0
    k = min(broke, fixed)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, (2 * tail) / (1 << n))  # exact big-int division: no overflow for large n


def read_previous(path: Path) -> dict[int, bool]:
    """The ``{index: correct}`` of a previous ``vhtool evaluate`` output (JSONL, one record a line).

    Raises:
        InputError: the file is missing or a line is not an evaluate record.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such file (--compare takes the -o output of an earlier vhtool evaluate).")
    out: dict[int, bool] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    doc = None
                if (
                    not isinstance(doc, dict)
                    or not isinstance(doc.get("index"), int)
                    or not isinstance(doc.get("correct"), bool)
                ):
                    raise InputError(
                        f"{path}: line {n} is not a vhtool evaluate record (an object with index and correct)."
                    )
                out[doc["index"]] = doc["correct"]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason}).") from None
    return out


@dataclass(frozen=True)
class Comparison:
    """This run against a previous one, record by record (records present in both).

    Attributes:
        previous: the previous output file.
        paired: records present in both runs.
        both_correct / both_wrong: concordant records.
        fixed: wrong before, correct now.
        broke: correct before, wrong now.
        only_now / only_before: records in one run only (skipped in the other, or not the same set).
        previous_accuracy / accuracy: over the paired records.
        p_value: exact McNemar two-sided p-value.
        alpha: the significance level.
    """

    previous: str
    paired: int
    both_correct: int
    both_wrong: int
    fixed: int
    broke: int
    only_now: int
    only_before: int
    previous_accuracy: float | None
    accuracy: float | None
    p_value: float
    alpha: float

    @property
    def worse(self) -> bool:
        """Significantly worse: more records broke than were fixed, at level ``alpha``."""
        return self.broke > self.fixed and self.p_value < self.alpha

    @property
    def better(self) -> bool:
        """Significantly better, at level ``alpha``."""
        return self.fixed > self.broke and self.p_value < self.alpha

    def to_json(self) -> dict[str, Any]:
        delta = None
        if self.accuracy is not None and self.previous_accuracy is not None:
            delta = self.accuracy - self.previous_accuracy
        return {
            "previous": self.previous,
            "paired": self.paired,
            "both_correct": self.both_correct,
            "both_wrong": self.both_wrong,
            "fixed": self.fixed,
            "broke": self.broke,
            "only_now": self.only_now,
            "only_before": self.only_before,
            "previous_accuracy": self.previous_accuracy,
            "accuracy": self.accuracy,
            "delta": delta,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "significantly_worse": self.worse,
            "significantly_better": self.better,
        }


def compare(now: Iterable[tuple[int, bool]], before: dict[int, bool], *, previous: str, alpha: float) -> Comparison:
    """Pairs this run's ``(index, correct)`` with a previous run's, by record index.

    Raises:
        InputError: no record is in both runs (not an output of the same pairs).
    """
    counts = {(True, True): 0, (False, False): 0, (False, True): 0, (True, False): 0}
    seen: set[int] = set()
    only_now = 0
    for index, correct in now:
        if index not in before:
            only_now += 1
            continue
        seen.add(index)
        counts[(before[index], correct)] += 1
    paired = len(seen)
    if paired == 0:
        raise InputError(
            f"{previous}: no record in common with this run; --compare takes the output of an earlier run on the "
            "same pairs."
        )
    prev_ok = counts[(True, True)] + counts[(True, False)]
    now_ok = counts[(True, True)] + counts[(False, True)]
    fixed, broke = counts[(False, True)], counts[(True, False)]
    return Comparison(
        previous=previous,
        paired=paired,
        both_correct=counts[(True, True)],
        both_wrong=counts[(False, False)],
        fixed=fixed,
        broke=broke,
        only_now=only_now,
        only_before=len(before) - paired,
        previous_accuracy=prev_ok / paired,
        accuracy=now_ok / paired,
        p_value=mcnemar_exact(broke, fixed),
        alpha=alpha,
    )


__all__ = ["Z95", "Comparison", "compare", "mcnemar_exact", "read_previous", "wilson_interval"]
