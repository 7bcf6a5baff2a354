"""The core of ``vhtool evaluate``: preference accuracy of a reward model or critic, on the scoring engine.

A preference record (TRL's standard, conversational or implicit-prompt format; ``rejected`` may be a list for
best-of-N) becomes one score record per answer (:mod:`.pairs`), exactly what ``vhtool score`` would read for that
text, so every score is ``vhtool score``'s. The answers of a window of records are tokenised together, identical
sequences are scored once, in the length-sorted batches of the scoring engine (:mod:`.run`); the records come
back in input order with their scores, margin and verdict (:mod:`.results`), summed up with a Wilson interval and,
against a previous run, an exact McNemar test (:mod:`.stats`). Inputs: JSONL, or through ``datasets`` a JSON
array, a Parquet file or a Hub data set (:mod:`.sources`). No printing here; the CLI formats.
"""

from __future__ import annotations

from vhtool.models.evaluate.pairs import Pair, parse_pair
from vhtool.models.evaluate.results import EvalSummary, Gate, PairResult, SubsetAccuracy
from vhtool.models.evaluate.run import EvalOptions, evaluate_pairs
from vhtool.models.evaluate.sources import PairSource, read_pairs, source_from_arg
from vhtool.models.evaluate.stats import Comparison, compare, mcnemar_exact, read_previous, wilson_interval

__all__ = [
    "Comparison",
    "EvalOptions",
    "EvalSummary",
    "Gate",
    "Pair",
    "PairResult",
    "PairSource",
    "SubsetAccuracy",
    "compare",
    "evaluate_pairs",
    "mcnemar_exact",
    "parse_pair",
    "read_pairs",
    "read_previous",
    "source_from_arg",
    "wilson_interval",
]
