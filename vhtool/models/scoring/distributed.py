"""Data-parallel ``vhtool score`` under ``torchrun`` / ``accelerate launch``: one JSONL, byte-identical to one process.

The launcher starts K copies of the command; each joins the process group (:mod:`vhtool.models.scoring.ranks`:
the environment, the exchanges and how ranks agree on a failure).

How the work is shared, and why it is by **planned batch** rather than by record index: on a CPU (and for
some GPU kernels) a record's score depends, in its last bits, on the shape of the batch it is computed in
(matmul blocking differs with the batch shape). A rank that scored "every K-th record" would batch records
differently from a single process, and the output would differ from it in the last digits. So every rank
reads the same input, tokenises each window (cheap) and computes the *same* batch plan a single process
computes (same sort, same token budget); batch number ``b`` (counted over the whole run) is scored by rank
``b mod K``. Every batch is thus the very batch a single process runs, and every value is the same, bit for
bit, for any record count (0, fewer records than ranks, a count not divisible by K).

After each window the ranks exchange (``gather_object`` to rank 0, then ``broadcast_object_list`` of the
verdict): rank 0 receives the other ranks' scores, puts the window's records in input order and writes them
(to stdout as they come, or to a temporary sibling of ``-o FILE`` that is renamed into place at the end, as
in one process), so memory stays constant and rank 0's summary is computed over the same stream, in the
same order, as a single process's. The exchange is also where failures meet: every rank catches its own
exception (a bad record with ``--on-error fail``, an exception or out-of-memory while scoring its batches,
a model that fails to load) and reports it at the next exchange, so no rank is ever left waiting in a
collective for one that has died; all ranks then stop with the same exit code (2 for a bad record or bad
input, 1 otherwise), rank 0 prints the one ``Error:`` line, and no output file is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vhtool.checkpoint.atomic import AtomicFile
from vhtool.errors import InputError, OperationError
from vhtool.models.scoring.engine import Scorer
from vhtool.models.scoring.inputs import InputItem, InputSpec, read_inputs
from vhtool.models.scoring.options import ScoreOptions
from vhtool.models.scoring.plan import windows
from vhtool.models.scoring.prepare import Prepared
from vhtool.models.scoring.ranks import (
    DEFAULT_TIMEOUT_S,
    DistEnv,
    ProcessGroup,
    RankOutcome,
    Verdict,
    outcome_from_exception,
    raise_verdict,
)
from vhtool.models.scoring.results import ScoredRecord, ScoreSummary, SkippedRecord
from vhtool.models.scoring.run import check_output, plan_window, score_batches, validate_all, with_output
from vhtool.models.scoring.tally import Tally


# ---------------------------------------------------------------------------------------------- the run
def score_dataset_distributed(
    checkpoint: str | os.PathLike[str],
    *,
    env: DistEnv,
    inputs: InputSpec,
    options: ScoreOptions,
    output: Path | None = None,
    force: bool = False,
    on_record: Callable[[ScoredRecord], None] | None = None,
    on_skip: Callable[[SkippedRecord], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    validate_first: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ScoreSummary | None:
    """:func:`vhtool.models.scoring.run.score_dataset` as one rank of a torchrun / accelerate launch job.

    Every rank calls this with the same arguments. Rank ``r`` scores the planned batches ``b`` with
    ``b mod world_size == r``; rank 0 writes every record in input order (to ``output`` or ``on_record``),
    calls ``on_skip``/``progress``, and returns the summary; the other ranks return ``None``.

    Args:
        checkpoint: the model (loaded by every rank).
        env: this rank's place in the job (:func:`detect_distributed`).
        inputs: a file or texts (stdin cannot be shared by ranks).
        options: see :class:`ScoreOptions` (``device_map`` is refused: one model per rank).
        output: JSONL file written by rank 0 (temporary sibling + rename), or ``None``.
        force: replace ``output`` if it exists.
        on_record: rank 0: called with each scored record, in input order.
        on_skip: rank 0: called with each skipped record.
        progress: rank 0: called with the number of records just finished and their tokens.
        on_phase: rank 0: called as the job enters each phase (see ``score_dataset``).
        validate_first: read and tokenise everything before scoring (see ``score_dataset``).
        timeout_s: the process group's timeout: how long a rank waits for the others at an exchange.

    Returns:
        The summary on rank 0 (over all records, equal to a single process's but for timings), ``None`` elsewhere.

    Raises:
        InputError: bad input or a bad record (every rank raises it, with the same message; exit 2).
        OperationError: a rank failed (the message names it), or the ranks lost contact (exit 1).
    """
    if inputs.stream is not None:
        raise InputError("--input - (stdin) cannot be shared by several ranks; give the input as a file.")
    if options.device_map is not None:
        raise InputError(
            f"--device-map {options.device_map} spreads one model over this machine's devices; it cannot run in "
            f"each of {env.world_size} ranks. Run one process with --device-map, or torchrun without it."
        )
    group = ProcessGroup(env, device=options.device, timeout_s=timeout_s)
    try:
        run = _RankRun(checkpoint, env=env, group=group, inputs=inputs, options=options, output=output, force=force)
        return run.run(
            on_record=on_record,
            on_skip=on_skip,
            progress=progress,
            phase=on_phase if on_phase is not None and env.rank == 0 else (lambda name: None),
            validate_first=validate_first,
        )
    finally:
        group.close()


class _RankRun:
    """One rank's share of a distributed run: steps separated by exchanges, each step's failure caught and reported."""

    def __init__(
        self,
        checkpoint: str | os.PathLike[str],
        *,
        env: DistEnv,
        group: ProcessGroup,
        inputs: InputSpec,
        options: ScoreOptions,
        output: Path | None,
        force: bool,
    ) -> None:
        self.checkpoint = checkpoint
        self.env = env
        self.group = group
        self.inputs = inputs
        self.options = options
        self.output = output
        self.force = force
        self.scorer: Scorer | None = None
        self.out_file: AtomicFile | None = None
        self.fmt = "text"
        self.items: Iterator[InputItem] = iter(())

    def _step(self, fn: Callable[[], tuple[str, Any]]) -> tuple[Verdict, list[RankOutcome] | None]:
        """Runs ``fn`` (-> ``(state, payload)``) catching anything, then meets the other ranks."""
        try:
            state, payload = fn()
            outcome = RankOutcome(self.env.rank, state, payload=payload)
        except Exception as exc:  # every failure is reported at the exchange, never raised before it
            outcome = outcome_from_exception(exc, rank=self.env.rank)
        verdict, gathered = self.group.exchange(outcome)
        if verdict.state == "fail":
            raise_verdict(verdict)
        return verdict, gathered

    def _check(self) -> tuple[str, Any]:
        """Cheap checks first, so that no rank loads a model for a run that cannot start."""
        writer = self.env.rank == 0 and self.output is not None
        if writer and self.output is not None:
            self.output = check_output(self.output, force=self.force, inputs=self.inputs, checkpoint=self.checkpoint)
        self.fmt, self.items = read_inputs(self.inputs, self.options.input_format)
        if writer and self.output is not None:
            self.out_file = AtomicFile(self.output)  # rank 0 writes; discarded unless the whole job succeeds
        return "ok", None

    def _load(self) -> tuple[str, Any]:
        self.scorer = Scorer(self.checkpoint, options=self.options, local_rank=self.env.local_rank)
        return "ok", None

    def _validate(self) -> tuple[str, Any]:
        assert self.scorer is not None
        validate_all(self.scorer, self.inputs, self.options)
        self.fmt, self.items = read_inputs(self.inputs, self.options.input_format)
        return "ok", None

    def run(
        self,
        *,
        on_record: Callable[[ScoredRecord], None] | None,
        on_skip: Callable[[SkippedRecord], None] | None,
        progress: Callable[[int, int], None] | None,
        phase: Callable[[str], None],
        validate_first: bool,
    ) -> ScoreSummary | None:
        rank, world = self.env.rank, self.env.world_size
        options = self.options
        try:
            self._step(self._check)
            phase("loading the model")
            self._step(self._load)
            if validate_first and options.on_error == "fail" and self.inputs.rereadable:
                phase("checking the input")
                self._step(self._validate)
            phase("scoring")
            scorer = self.scorer
            assert scorer is not None
            tally = Tally()
            window_iter = windows(self.items, options.window)
            first_batch = 0  # batches are numbered over the whole run: batch b is rank b mod world's
            pending: tuple[list[Prepared], list[int], list[list[int]]] | None = None
            current: tuple[list[Prepared], list[int], list[list[int]]] | None = None
            results: dict[int, Any] = {}

            def emit() -> None:
                nonlocal pending
                if pending is not None:
                    prepared, lengths, plan = pending
                    pending = None
                    tally.add_window(
                        prepared,
                        lengths,
                        plan,
                        results,
                        sink=self.out_file.sink if self.out_file is not None else None,
                        on_record=on_record,
                        on_skip=on_skip,
                        progress=progress,
                    )

            def window_step() -> tuple[str, Any]:
                nonlocal current
                emit()  # rank 0 writes the previous window here, so a failure to write is reported like any other
                window = next(window_iter, None)
                if window is None:
                    return "done", None
                prepared, good, lengths, plan = plan_window(scorer, window, options, self.inputs)
                current = (prepared, lengths, plan)
                mine = [b for b in range(len(plan)) if (first_batch + b) % world == rank]
                try:
                    own = score_batches(scorer, good, plan, mine)
                except Exception as exc:
                    lines = sorted(good[k].item.line for b in mine for k in plan[b])
                    shown = ", ".join(map(str, lines[:8])) + (", ..." if len(lines) > 8 else "")
                    what = outcome_from_exception(exc, rank=rank).message
                    raise OperationError(f"{self.inputs.label()}: scoring lines {shown} failed: {what}") from None
                return "ok", own

            while True:
                verdict, gathered = self._step(window_step)
                if verdict.state == "done":
                    break
                assert current is not None
                first_batch += len(current[2])
                if gathered is not None:  # rank 0: every rank's scores of this window, then written in order
                    results = {}
                    for o in gathered:
                        results.update(o.payload)
                    pending = current
                current = None
            summary = tally.summary(scorer, self.fmt, ranks=world) if rank == 0 else None

            def finish() -> tuple[str, Any]:
                if self.out_file is not None:
                    phase("writing")
                    self.out_file.commit()
                return "ok", None

            self._step(finish)
            if summary is not None and self.output is not None:
                summary = with_output(summary, str(self.output))
            return summary
        finally:
            if self.out_file is not None:
                self.out_file.discard()


__all__ = ["score_dataset_distributed"]
