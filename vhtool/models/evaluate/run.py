"""One evaluation, in one process or as one rank of a torchrun / accelerate launch job, on the scoring engine.

Per window of records (``ScoreOptions.window``): every record's answers become score records
(:mod:`.pairs`), the window is tokenised in one call (:meth:`Scorer.prepare`), identical token sequences are
kept once (a prompt's shared rejected answer, a chosen answer repeated across records), and the distinct
sequences are planned into length-sorted batches under the token budget (:func:`plan_batches`) and scored by
:func:`score_batches` — the very functions ``vhtool score`` runs, so a sequence's score is ``vhtool score``'s.

With the prompt cache (causal models, checked at load: :mod:`vhtool.models.scoring.prefix`), the distinct
sequences of a record that share a prefix of at least ``MIN_SHARED_PREFIX`` tokens (their prompt, as the joint
tokenisation has it) are scored from that prefix's cached keys and values: prefixes are batched by length into
*chunks*, each chunk runs once and its sequences' remaining tokens run in length-sorted batches from its cache.

Under torchrun the ranks share the planned batches as ``vhtool score`` does (batch ``b`` is rank ``b mod K``'s;
see :mod:`vhtool.models.scoring.distributed`): every rank reads and plans the same windows, rank 0 gathers the
scores at each window's exchange and writes the records, so its output is byte-identical to one process's. A
failure on any rank is reported at the next exchange and stops every rank with the same code.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vhtool.checkpoint.atomic import AtomicFile
from vhtool.checkpoint.target import check_output_target
from vhtool.errors import InputError, OperationError
from vhtool.models.evaluate.pairs import DEFAULT_SUBSET_FIELD, Pair, answer_label, parse_pair
from vhtool.models.evaluate.results import EvalSummary, Gate, PairResult, SubsetAccuracy
from vhtool.models.evaluate.sources import PairSource, read_pairs
from vhtool.models.evaluate.stats import compare, read_previous, wilson_interval
from vhtool.models.scoring.engine import Scorer
from vhtool.models.scoring.inputs import InputItem
from vhtool.models.scoring.options import ScoreOptions
from vhtool.models.scoring.plan import plan_batches, windows
from vhtool.models.scoring.prefix import PromptCache, common_prefix
from vhtool.models.scoring.prepare import Prepared
from vhtool.models.scoring.ranks import (
    DEFAULT_TIMEOUT_S,
    DistEnv,
    ProcessGroup,
    RankOutcome,
    outcome_from_exception,
    raise_verdict,
)
from vhtool.models.scoring.results import BadRecordError, SkippedRecord
from vhtool.models.scoring.run import score_batches
from vhtool.models.scoring.tally import _Histogram, _Stats

#: The shortest shared prefix worth a cached forward: a shorter one saves less than the extra forward costs.
MIN_SHARED_PREFIX = 8


@dataclass(frozen=True)
class EvalOptions:
    """What ``vhtool evaluate`` adds to the scoring options.

    Attributes:
        subset_field: the record field that names its group.
        compare: a previous run's ``-o`` output to compare with, record by record.
        alpha: the significance level of the comparison.
        gate: the pass/fail rules.
        prompt_cache: run a prompt its record's answers share once, from a KV cache, where the model allows it.
    """

    subset_field: str = DEFAULT_SUBSET_FIELD
    compare: Path | None = None
    alpha: float = 0.05
    gate: Gate = field(default_factory=Gate)
    prompt_cache: bool = True

    def __post_init__(self) -> None:
        want = self.gate.require_accuracy
        if want is not None and not 0.0 <= want <= 1.0:
            raise InputError(f"--require-accuracy must be between 0 and 1, got {want}.")
        if not 0.0 < self.alpha < 1.0:
            raise InputError(f"--alpha must be between 0 and 1 (exclusive), got {self.alpha}.")
        if self.gate.require_no_regression and self.compare is None:
            raise InputError("--require-no-regression needs --compare PREVIOUS.jsonl (the output of an earlier run).")
        if not self.subset_field:
            raise InputError("--subset-field must not be empty.")


# ---------------------------------------------------------------------------------------------- one window
@dataclass
class Window:
    """A window of records turned into distinct token sequences and a batch plan.

    Attributes:
        items: the records as read.
        pairs: each record's :class:`Pair` (``None`` for a bad record).
        errors: each record's reason for being bad (``None`` for a good one).
        answer_seqs: each good record's answers as positions into ``seqs`` (chosen first).
        truncated: whether ``--max-length`` cut one of the record's answers.
        seqs: the distinct sequences (prepared records), ``lengths`` their token counts, ``plan`` the batches of
            those scored whole.
        chunks: the sequences scored from a shared prefix (see :class:`Chunk`); work unit ``u`` of the window is
            ``plan[u]``, then ``chunks[u - len(plan)]``.
    """

    items: list[InputItem]
    pairs: list[Pair | None]
    errors: list[str | None]
    answer_seqs: list[list[int]]
    truncated: list[bool]
    seqs: list[Prepared]
    lengths: list[int]
    plan: list[list[int]]
    answers: int = 0
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def units(self) -> int:
        """Work units (batches and chunks), numbered as the ranks share them."""
        return len(self.plan) + len(self.chunks)


@dataclass
class Chunk:
    """A batch of shared prefixes and the sequences scored from their cache.

    Attributes:
        prefixes: the prefixes (token ids), longest first.
        rows: for each member sequence, its prefix's row in ``prefixes``; ``members`` the sequences (positions
            into ``Window.seqs``); ``plan`` the batches of members (positions into ``members``).
    """

    prefixes: list[list[int]]
    rows: list[int]
    members: list[int]
    plan: list[list[int]]

    def padded(self, lengths: Sequence[int]) -> int:
        """Padded tokens run: the prefix batch, then each batch of continuations."""
        width = max(len(p) for p in self.prefixes)
        tails = [lengths[k] - len(self.prefixes[g]) for g, k in zip(self.rows, self.members, strict=True)]
        return len(self.prefixes) * width + sum(len(b) * max(tails[j] for j in b) for b in self.plan)

    def forwarded(self, lengths: Sequence[int]) -> int:
        """Real tokens run: each prefix once, then each member's own tokens."""
        return sum(len(p) for p in self.prefixes) + sum(
            lengths[k] - len(self.prefixes[g]) for g, k in zip(self.rows, self.members, strict=True)
        )


def prepare_window(
    scorer: Scorer,
    items: Sequence[InputItem],
    options: ScoreOptions,
    *,
    subset_field: str,
    source: PairSource,
    shared: bool = False,
) -> Window:
    """Parses, tokenises, deduplicates and plans one window (``shared``: plan prompt-cache chunks too).

    Raises:
        BadRecordError: a bad record with ``on_error="fail"`` (the first in input order).
    """
    n = len(items)
    pairs: list[Pair | None] = [None] * n
    errors: list[str | None] = [None] * n
    flat: list[InputItem] = []
    owners: list[tuple[int, int]] = []
    for r, it in enumerate(items):
        if it.error is not None:
            errors[r] = it.error
            continue
        try:
            pair = parse_pair(it.payload, subset_field=subset_field)
        except InputError as exc:
            errors[r] = str(exc)
            continue
        pairs[r] = pair
        for a, payload in enumerate(pair.answers):
            flat.append(InputItem(it.index, it.line, payload))
            owners.append((r, a))
    prepared = scorer.prepare(flat)
    answer_seqs: list[list[int]] = [[] for _ in range(n)]
    truncated = [False] * n
    seqs: list[Prepared] = []
    where: dict[tuple[int, ...], int] = {}
    for p, (r, a) in zip(prepared, owners, strict=True):
        owner = pairs[r]
        if errors[r] is not None or owner is None:
            continue
        if p.error is not None or p.ids is None:
            errors[r] = f"{answer_label(a, best_of_n=owner.best_of_n)}: {p.error or 'no tokens'}"
            continue
        key = tuple(p.ids)
        pos = where.get(key)
        if pos is None:
            pos = where[key] = len(seqs)
            seqs.append(p)
        answer_seqs[r].append(pos)
        truncated[r] = truncated[r] or p.truncated
    for r in range(n):
        if errors[r] is not None:
            pairs[r] = None
            answer_seqs[r] = []
            if options.on_error == "fail":
                it = items[r]
                raise BadRecordError(
                    f"{source.label()}: {source.unit} {it.line}: {errors[r]}.", index=it.index, line=it.line
                )
    # Sequences referenced only by records that turned out bad are still scored (rarely any; keeps this simple).
    lengths = [len(p.ids or ()) for p in seqs]
    groups = _shared_prefixes(seqs, answer_seqs) if shared else {}
    in_chunks = {k for members in groups.values() for k in members}
    whole = [k for k in range(len(seqs)) if k not in in_chunks]
    plan = [
        [whole[j] for j in b]
        for b in plan_batches(
            [lengths[k] for k in whole], max_batch_tokens=options.max_batch_tokens, batch_size=options.batch_size
        )
    ]
    answers = sum(len(a) for a in answer_seqs)
    chunks = _plan_chunks(groups, lengths, options)
    return Window(list(items), pairs, errors, answer_seqs, truncated, seqs, lengths, plan, answers, chunks)


def _shared_prefixes(seqs: Sequence[Prepared], answer_seqs: Sequence[list[int]]) -> dict[tuple[int, ...], list[int]]:
    """Prefix -> the distinct sequences scored from it: per record, the tokens all its answers start with.

    The prefix stops a token short of the shortest answer, so every sequence has a token of its own to run. A
    sequence shared by several records runs from the first record's prefix; a prefix left with one sequence is
    not worth a cache (it runs whole).
    """
    claim: dict[int, tuple[int, ...]] = {}
    for positions in answer_seqs:
        distinct = list(dict.fromkeys(positions))
        if len(distinct) < 2:
            continue
        ids = [seqs[k].ids or [] for k in distinct]
        n = min(common_prefix(ids), min(len(x) for x in ids) - 1)
        if n < MIN_SHARED_PREFIX:
            continue
        key = tuple(ids[0][:n])
        for k in distinct:
            claim.setdefault(k, key)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, key in claim.items():
        groups.setdefault(key, []).append(k)
    return {key: members for key, members in groups.items() if len(members) >= 2}


def _plan_chunks(
    groups: dict[tuple[int, ...], list[int]], lengths: Sequence[int], options: ScoreOptions
) -> list[Chunk]:
    """Prefixes batched by length (as sequences are), each batch's members batched by their padded cost."""
    keys = list(groups)
    chunks: list[Chunk] = []
    budget, size = options.max_batch_tokens, options.batch_size
    for batch in plan_batches([len(k) for k in keys], max_batch_tokens=budget, batch_size=size):
        prefixes = [list(keys[g]) for g in batch]
        width = max(len(p) for p in prefixes)
        rows = [r for r, g in enumerate(batch) for _ in groups[keys[g]]]
        members = [k for g in batch for k in groups[keys[g]]]
        # a continuation attends over the chunk's whole prefix width: that is its cost, and its cache's size
        cost = [width + lengths[k] - len(prefixes[r]) for r, k in zip(rows, members, strict=True)]
        plan = plan_batches(cost, max_batch_tokens=budget, batch_size=size)
        chunks.append(Chunk(prefixes, rows, members, plan))
    return chunks


def score_units(
    scorer: Scorer,
    cache: PromptCache | None,
    window: Window,
    which: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, Any]:
    """Scores the work units ``which`` of ``window`` (see :attr:`Window.units`): ``{sequence: (score, None)}``."""
    whole = [u for u in which if u < len(window.plan)]
    results: dict[int, Any] = dict(score_batches(scorer, window.seqs, window.plan, whole, progress))
    for u in which:
        if u < len(window.plan):
            continue
        assert cache is not None
        chunk = window.chunks[u - len(window.plan)]
        state = cache.run_prefixes(chunk.prefixes)
        for b in chunk.plan:
            ks = [chunk.members[j] for j in b]
            seqs = [window.seqs[k].ids or [] for k in ks]
            scores = cache.score_from_prefixes(state, [chunk.rows[j] for j in b], seqs)
            for k, score in zip(ks, scores, strict=True):
                results[k] = (score, None)
            if progress is not None:
                progress(len(ks), sum(len(x) for x in seqs))
    return results


# ---------------------------------------------------------------------------------------------- counting
class EvalTally:
    """The records of a run in input order: writes them, counts them, sums them up."""

    def __init__(self) -> None:
        self.count = self.correct = self.ties = self.nonfinite = self.skipped = 0
        self.answers = self.sequences = self.tokens = self.padded = self.truncated = self.batches = 0
        self.forwarded = self.cached_prompts = self.cached_answers = 0
        self.best_of_n = 0
        self.kinds: dict[str, int] = {}
        self.subsets: dict[str, list[int]] = {}
        self.margins = _Stats()
        self.histogram = _Histogram()
        self.outcomes: list[tuple[int, bool]] = []
        self.t0 = time.perf_counter()

    def add_window(
        self,
        window: Window,
        scores: dict[int, tuple[float, Any]],
        *,
        sink: Any,
        on_record: Callable[[PairResult], None] | None,
        on_skip: Callable[[SkippedRecord], None] | None,
    ) -> None:
        self.batches += len(window.plan) + sum(1 + len(c.plan) for c in window.chunks)
        self.padded += sum(len(b) * max(window.lengths[k] for k in b) for b in window.plan)
        self.padded += sum(c.padded(window.lengths) for c in window.chunks)
        self.sequences += len(window.seqs)
        self.tokens += sum(window.lengths)
        self.forwarded += sum(window.lengths[k] for b in window.plan for k in b)
        self.forwarded += sum(c.forwarded(window.lengths) for c in window.chunks)
        self.cached_prompts += sum(len(c.prefixes) for c in window.chunks)
        self.cached_answers += sum(len(c.members) for c in window.chunks)
        self.answers += window.answers
        for r, it in enumerate(window.items):
            pair = window.pairs[r]
            if pair is None:
                self.skipped += 1
                if on_skip is not None:
                    on_skip(SkippedRecord(it.index, it.line, window.errors[r] or "bad record"))
                continue
            vals = [float(scores[pos][0]) for pos in window.answer_seqs[r]]
            res = PairResult(
                index=it.index,
                chosen=vals[0],
                rejected=tuple(vals[1:]),
                best_of_n=pair.best_of_n,
                subset=pair.subset,
                truncated=window.truncated[r],
            )
            self._count(res, pair)
            if sink is not None:
                sink.write(json.dumps(res.to_json(), allow_nan=False) + "\n")
            if on_record is not None:
                on_record(res)

    def _count(self, res: PairResult, pair: Pair) -> None:
        self.count += 1
        self.correct += int(res.correct)
        self.ties += int(res.tie)
        self.truncated += int(res.truncated)
        self.best_of_n += int(pair.best_of_n)
        self.kinds[pair.kind] = self.kinds.get(pair.kind, 0) + 1
        self.outcomes.append((res.index, res.correct))
        if res.subset is not None:
            s = self.subsets.setdefault(res.subset, [0, 0, 0])
            s[0] += 1
            s[1] += int(res.correct)
            s[2] += int(res.tie)
        if res.finite:
            self.margins.add(res.margin)
            self.histogram.add(res.margin)
        else:
            self.nonfinite += 1

    def summary(
        self, scorer: Scorer, source: PairSource, *, ranks: int, gate: Gate, prompt_cache: str = "off"
    ) -> EvalSummary:
        m = self.margins
        have = m.finite > 0
        return EvalSummary(
            checkpoint=scorer.checkpoint,
            input=source.label(),
            count=self.count,
            skipped=self.skipped,
            correct=self.correct,
            ties=self.ties,
            nonfinite=self.nonfinite,
            accuracy=self.correct / self.count if self.count else None,
            interval=wilson_interval(self.correct, self.count),
            subsets=tuple(SubsetAccuracy(k, v[0], v[1], v[2]) for k, v in sorted(self.subsets.items())),
            margin_mean=m.mean if have else None,
            margin_std=math.sqrt(m.m2 / m.finite) if have else None,
            margin_min=m.min if have else None,
            margin_max=m.max if have else None,
            answers=self.answers,
            sequences=self.sequences,
            tokens=self.tokens,
            padded_tokens=self.padded,
            truncated=self.truncated,
            batches=self.batches,
            best_of_n=self.best_of_n,
            kinds=tuple(sorted(self.kinds.items())),
            seconds=time.perf_counter() - self.t0,
            load_seconds=scorer.load_seconds,
            head=scorer.head,
            head_reason=scorer.head_reason,
            join=scorer.join,
            dtype=scorer.compute_dtype,
            device=scorer.device,
            padding_side=scorer.padding_side,
            forward=scorer.forward_kind,
            ranks=ranks,
            notes=tuple(scorer.notes),
            histogram=self.histogram.bins(),
            gate=gate,
            forwarded_tokens=self.forwarded,
            prompt_cache=prompt_cache,
            cached_prompts=self.cached_prompts,
            cached_answers=self.cached_answers,
        )


# ---------------------------------------------------------------------------------------------- the run
def check_eval_output(
    output: Path, *, force: bool, source: PairSource, checkpoint: str | os.PathLike[str], compare_with: Path | None
) -> Path:
    """Refuses an output that may not be written (:func:`check_output_target`); returns it normalised."""
    local_ckpt = checkpoint if Path(checkpoint).exists() else None
    return check_output_target(output, force=force, inputs=[source.path, local_ckpt, compare_with], kind="file")


def evaluate_pairs(
    checkpoint: str | os.PathLike[str],
    *,
    source: PairSource,
    options: ScoreOptions,
    eval_options: EvalOptions | None = None,
    output: Path | None = None,
    force: bool = False,
    on_record: Callable[[PairResult], None] | None = None,
    on_skip: Callable[[SkippedRecord], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    validate_first: bool = False,
    env: DistEnv | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> EvalSummary | None:
    """Scores every preference record of ``source`` with ``checkpoint`` and sums up how often chosen wins.

    Records are written in input order to ``output`` (JSONL, built in a temporary sibling and renamed into place
    at the end) and/or passed to ``on_record``. With ``env`` (a torchrun / accelerate launch job), every rank calls
    this with the same arguments; rank 0 writes, calls the callbacks and returns the summary, the others ``None``.

    Args:
        checkpoint: the model (local directory, Hub id, ``builtin:*``).
        source: where the preference records come from.
        options: the scoring options (head, dtype, device, batches, ``on_error``, ...).
        eval_options: subsets, comparison and gate (see :class:`EvalOptions`).
        output: a JSONL file to write, or ``None``.
        force: replace ``output`` if it is a previous output.
        on_record: called with each record, in input order.
        on_skip: called with each skipped record (``on_error="skip"``).
        progress: called after each scored batch with its sequences and their tokens.
        on_phase: called as the run enters each phase.
        validate_first: with ``on_error="fail"`` and a re-readable source, read and tokenise everything before
            scoring, so that a bad record fails the run before any record is passed to ``on_record``.
        env: this rank's place in a distributed job, or ``None`` (one process).
        timeout_s: under ``env``, how long a rank waits for the others at an exchange.

    Returns:
        The summary (on rank 0), gates evaluated but not enforced (see :meth:`EvalSummary.gate_failures`).

    Raises:
        InputError: bad options, a bad record with ``on_error="fail"``, an output that may not be written, a
            checkpoint that cannot be scored, an unreadable ``--compare`` file (exit 2).
        OperationError: writing failed, or a rank failed (exit 1).
    """
    eval_options = eval_options or EvalOptions()
    if env is not None:
        if source.stream is not None:
            raise InputError("-i - (stdin) cannot be shared by several ranks; give the input as a file.")
        if options.device_map is not None:
            raise InputError(
                f"--device-map {options.device_map} spreads one model over this machine's devices; it cannot run in "
                f"each of {env.world_size} ranks. Run one process with --device-map, or torchrun without it."
            )
    group = ProcessGroup(env, device=options.device, timeout_s=timeout_s) if env is not None else None
    try:
        run = _Run(checkpoint, env=env, group=group, source=source, options=options, eval_options=eval_options)
        return run.run(
            output=output,
            force=force,
            on_record=on_record,
            on_skip=on_skip,
            progress=progress,
            phase=on_phase if on_phase is not None and run.rank == 0 else (lambda name: None),
            validate_first=validate_first,
        )
    finally:
        if group is not None:
            group.close()


class _Run:
    """One process's share of an evaluation: steps that, under torchrun, end in an exchange with the other ranks."""

    def __init__(
        self,
        checkpoint: str | os.PathLike[str],
        *,
        env: DistEnv | None,
        group: ProcessGroup | None,
        source: PairSource,
        options: ScoreOptions,
        eval_options: EvalOptions,
    ) -> None:
        self.checkpoint = checkpoint
        self.group = group
        self.local_rank = env.local_rank if env is not None else None
        self.rank = env.rank if env is not None else 0
        self.world = env.world_size if env is not None else 1
        self.source = source
        self.options = options
        self.eval_options = eval_options
        self.scorer: Scorer | None = None
        self.cache: PromptCache | None = None
        self.cache_state = "off: --no-prompt-cache"
        self.out_file: AtomicFile | None = None
        self.items: Iterator[InputItem] = iter(())
        self.previous: dict[int, bool] | None = None

    def _step(self, fn: Callable[[], tuple[str, Any]]) -> tuple[str, list[Any]]:
        """Runs ``fn`` (-> ``(state, payload)``); under torchrun, meets the other ranks (failures are agreed on).

        Returns the agreed state and, on rank 0, every rank's payload (one process: its own).
        """
        if self.group is None:
            state, payload = fn()
            return state, [payload]
        try:
            state, payload = fn()
            outcome = RankOutcome(self.rank, state, payload=payload)
        except Exception as exc:  # every failure is reported at the exchange, never raised before it
            outcome = outcome_from_exception(exc, rank=self.rank)
        verdict, gathered = self.group.exchange(outcome)
        if verdict.state == "fail":
            raise_verdict(verdict)
        return verdict.state, [o.payload for o in gathered] if gathered is not None else []

    def run(
        self,
        *,
        output: Path | None,
        force: bool,
        on_record: Callable[[PairResult], None] | None,
        on_skip: Callable[[SkippedRecord], None] | None,
        progress: Callable[[int, int], None] | None,
        phase: Callable[[str], None],
        validate_first: bool,
    ) -> EvalSummary | None:
        options, eo, source = self.options, self.eval_options, self.source
        writer = self.rank == 0

        def check() -> tuple[str, Any]:
            nonlocal output
            if writer and output is not None:
                output = check_eval_output(
                    output, force=force, source=source, checkpoint=self.checkpoint, compare_with=eo.compare
                )
            if writer and eo.compare is not None:
                self.previous = read_previous(eo.compare)
            self.items = read_pairs(source)
            if writer and output is not None:
                self.out_file = AtomicFile(output)  # rank 0 writes; discarded unless the whole run succeeds
            return "ok", None

        def load() -> tuple[str, Any]:
            self.scorer = Scorer(self.checkpoint, options=options, local_rank=self.local_rank)
            if eo.prompt_cache:  # every rank runs the same check on the same model: they agree
                self.cache, self.cache_state = PromptCache.check(self.scorer)
            return "ok", None

        def validate() -> tuple[str, Any]:
            assert self.scorer is not None
            for window in windows(read_pairs(source), options.window):
                prepare_window(self.scorer, window, options, subset_field=eo.subset_field, source=source)
            self.items = read_pairs(source)
            return "ok", None

        try:
            self._step(check)
            phase("loading the model")
            self._step(load)
            scorer = self.scorer
            assert scorer is not None
            if validate_first and options.on_error == "fail" and source.rereadable:
                phase("checking the input")
                self._step(validate)
            phase("scoring")
            tally = EvalTally()
            window_iter = windows(self.items, options.window)
            first_batch = 0  # batches are numbered over the whole run: batch b is rank b mod world's
            pending: tuple[Window, dict[int, Any]] | None = None
            current: Window | None = None

            def emit() -> None:
                nonlocal pending
                if pending is not None:
                    window, scores = pending
                    pending = None
                    sink = self.out_file.sink if self.out_file is not None else None
                    tally.add_window(window, scores, sink=sink, on_record=on_record, on_skip=on_skip)

            def window_step() -> tuple[str, Any]:
                nonlocal current
                emit()  # rank 0 writes the previous window here, so a failure to write is reported like any other
                items = next(window_iter, None)
                if items is None:
                    return "done", None
                current = prepare_window(
                    scorer, items, options, subset_field=eo.subset_field, source=source, shared=self.cache is not None
                )
                mine = [u for u in range(current.units) if (first_batch + u) % self.world == self.rank]
                try:
                    own = score_units(scorer, self.cache, current, mine, progress if writer else None)
                except Exception as exc:
                    if self.group is None:
                        raise
                    what = outcome_from_exception(exc, rank=self.rank).message
                    raise OperationError(f"{source.label()}: scoring a window failed: {what}") from None
                return "ok", own

            while True:
                state, payloads = self._step(window_step)
                if state == "done":
                    break
                assert current is not None
                first_batch += current.units
                if writer:
                    scores: dict[int, Any] = {}
                    for p in payloads:
                        scores.update(p)
                    pending = (current, scores)
                current = None

            summary: EvalSummary | None = None

            def finish() -> tuple[str, Any]:
                nonlocal summary
                emit()
                if writer:  # summed up (and compared) before the output is committed: a failure leaves nothing
                    summary = tally.summary(
                        scorer, source, ranks=self.world, gate=eo.gate, prompt_cache=self.cache_state
                    )
                    if self.previous is not None and eo.compare is not None:
                        comparison = compare(tally.outcomes, self.previous, previous=str(eo.compare), alpha=eo.alpha)
                        summary = replace(summary, comparison=comparison)
                    if output is not None:
                        summary = replace(summary, output=str(output))
                if self.out_file is not None:
                    phase("writing")
                    self.out_file.commit()
                return "ok", None

            self._step(finish)
            return summary
        finally:
            if self.out_file is not None:
                self.out_file.discard()


__all__ = [
    "MIN_SHARED_PREFIX",
    "Chunk",
    "EvalOptions",
    "EvalTally",
    "Window",
    "check_eval_output",
    "evaluate_pairs",
    "prepare_window",
    "score_units",
]
