"""One scoring run in one process: :func:`score_dataset` reads windows, plans and scores their batches, and
writes the records in input order (to an atomic output file and/or a callback), then sums them up.

Scores: ``value`` is the value head at each sequence's last non-padding token (what
``AutoModelForCausalLMWithValueHead.forward`` gives there); ``reward`` is the attached reward adapter's score
head on the backbone run with the adapter active (what ``compute_reward_score`` gives there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from vhtool.checkpoint.atomic import AtomicFile
from vhtool.checkpoint.target import check_output_target
from vhtool.errors import InputError
from vhtool.models.scoring.engine import Scorer
from vhtool.models.scoring.inputs import InputItem, InputSpec, read_inputs
from vhtool.models.scoring.options import ScoreOptions
from vhtool.models.scoring.plan import plan_batches, windows
from vhtool.models.scoring.prepare import Prepared
from vhtool.models.scoring.results import BadRecordError, ScoredRecord, ScoreSummary, SkippedRecord
from vhtool.models.scoring.tally import Results, Tally


def validate_all(scorer: Scorer, spec: InputSpec, options: ScoreOptions) -> None:
    """A first pass over a re-readable input: parses and tokenises everything, fails at the first bad record."""
    _, items = read_inputs(spec, options.input_format)
    for window in windows(items, options.window):
        for p in scorer.prepare(window):
            if p.error is not None:
                raise bad_record(spec, p)


def bad_record(spec: InputSpec, p: Prepared) -> BadRecordError:
    """The error for a record that cannot be scored, naming the input and the record's line (or ``--text N``)."""
    return BadRecordError(f"{spec.where(p.item.line)}: {p.error}.", index=p.item.index, line=p.item.line)


def check_output(
    output: Path, *, force: bool, inputs: InputSpec, checkpoint: str | os.PathLike[str] | None = None
) -> Path:
    """Refuses an output file that may not be written (see :mod:`vhtool.checkpoint.target`); returns it normalised.

    Raises:
        OutputExistsError: ``output`` is a previous score output and ``force`` is false.
        InputError: ``output`` is a directory, a file that is not a score output, the input file, inside
            the checkpoint, or its directory is missing.
    """
    local_ckpt = checkpoint if checkpoint is not None and Path(checkpoint).exists() else None
    return check_output_target(output, force=force, inputs=[inputs.path, local_ckpt], kind="file")


def score_dataset(
    checkpoint: str | os.PathLike[str],
    *,
    inputs: InputSpec,
    options: ScoreOptions,
    output: Path | None = None,
    force: bool = False,
    on_record: Callable[[ScoredRecord], None] | None = None,
    on_skip: Callable[[SkippedRecord], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    validate_first: bool = False,
    scorer: Scorer | None = None,
) -> ScoreSummary:
    """Scores every record of ``inputs`` with ``checkpoint``'s value head or reward adapter, in input order.

    Records are written to ``output`` (JSONL, built in a temporary sibling and renamed into place at the
    end, so a failed run leaves nothing) and/or passed to ``on_record`` as they are scored, window by window.
    Under torchrun, see :func:`vhtool.models.scoring.distributed.score_dataset_distributed`.

    Args:
        checkpoint: the model to score with (local directory, Hub id, ``builtin:*``).
        inputs: where the records come from.
        options: see :class:`ScoreOptions`.
        output: a JSONL file to write, or ``None``.
        force: replace ``output`` if it exists.
        on_record: called with each scored record, in input order.
        on_skip: called with each skipped record (``on_error="skip"``).
        progress: called with the number of records just finished (scored or skipped) and their tokens.
        on_phase: called as the run enters each phase: ``"loading the model"``, ``"checking the input"``,
            ``"scoring"``, ``"writing"``.
        validate_first: with ``on_error="fail"`` and a re-readable input (a file or texts), read and
            tokenise everything before scoring, so that a bad record fails the run before any record is
            passed to ``on_record``. Ignored for a stream (stdin): it can be read once only.
        scorer: an already loaded :class:`Scorer` (its options win over ``options``' model options).

    Returns:
        The summary of the run.

    Raises:
        InputError: bad options, a bad record with ``on_error="fail"`` (a :class:`BadRecordError` naming its
            line), an existing ``output`` without ``force``, a checkpoint that cannot be scored.
        OperationError: writing the output failed.
    """
    if output is not None:
        output = check_output(output, force=force, inputs=inputs, checkpoint=checkpoint)
    # Taken before the model loads: an output that cannot be created fails in a second, not after the load.
    out_file = AtomicFile(output) if output is not None else None
    try:
        phase = on_phase or (lambda name: None)
        fmt, items = read_inputs(inputs, options.input_format)
        if scorer is None:
            phase("loading the model")
            scorer = Scorer(checkpoint, options=options)
        if validate_first and options.on_error == "fail" and inputs.rereadable:
            phase("checking the input")
            validate_all(scorer, inputs, options)
            fmt, items = read_inputs(inputs, options.input_format)
        phase("scoring")
        tally = Tally()
        for window in windows(items, options.window):
            prepared, good, lengths, plan = plan_window(scorer, window, options, inputs)
            results = score_batches(scorer, good, plan, range(len(plan)), progress)  # progress batch by batch
            tally.add_window(
                prepared,
                lengths,
                plan,
                results,
                sink=out_file.sink if out_file is not None else None,
                on_record=on_record,
                on_skip=on_skip,
                progress=progress,
                scored_progress=False,
            )
        if tally.stats.count + tally.skipped == 0:  # stdin (a file was refused before the load): no 0-byte output
            raise InputError(f"{inputs.label()}: no records to score (the input is empty); nothing was written.")
        summary = tally.summary(scorer, fmt)
        if out_file is not None and output is not None:
            phase("writing")
            out_file.commit()
            summary = with_output(summary, str(output))
        return summary
    finally:
        if out_file is not None:
            out_file.discard()


def with_output(summary: ScoreSummary, output: str) -> ScoreSummary:
    """``summary`` naming the output file it was written to."""
    return replace(summary, output=output)


def plan_window(
    scorer: Scorer, window: Sequence[InputItem], options: ScoreOptions, spec: InputSpec
) -> tuple[list[Prepared], list[Prepared], list[int], list[list[int]]]:
    """Tokenises a window and plans its batches: ``(prepared, good, lengths of good, batches of good positions)``.

    Raises:
        BadRecordError: a bad record with ``on_error="fail"`` (the first in input order).
    """
    prepared = scorer.prepare(window)
    good: list[Prepared] = []
    for p in prepared:
        if p.error is None:
            good.append(p)
        elif options.on_error == "fail":
            raise bad_record(spec, p)
    lengths = [len(p.ids or ()) for p in good]
    plan = plan_batches(lengths, max_batch_tokens=options.max_batch_tokens, batch_size=options.batch_size)
    return prepared, good, lengths, plan


def score_batches(
    scorer: Scorer,
    good: Sequence[Prepared],
    plan: Sequence[list[int]],
    which: Iterable[int],
    progress: Callable[[int, int], None] | None = None,
) -> Results:
    """Scores the batches ``which`` (positions into ``plan``): ``{position in good: (score, values)}``.

    ``progress`` is called after each batch with its records and their tokens.
    """
    results: Results = {}
    for b in which:
        batch = plan[b]
        seqs = [good[k].ids or [] for k in batch]
        scores, values = scorer.score_batch(seqs)
        for j, k in enumerate(batch):
            results[k] = (scores[j], values[j] if values is not None else None)
        if progress is not None:
            progress(len(batch), sum(len(x) for x in seqs))
    return results


__all__ = [
    "bad_record",
    "check_output",
    "plan_window",
    "score_batches",
    "score_dataset",
    "validate_all",
    "with_output",
]
