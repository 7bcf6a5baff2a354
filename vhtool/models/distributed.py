"""Data-parallel ``vhtool score`` under ``torchrun`` / ``accelerate launch``: one JSONL, byte-identical to one process.

vhtool starts no processes and opens no sockets of its own: the launcher starts K copies of the command and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; each copy joins the process
group through that ``env://`` rendezvous (backend ``nccl`` when the ranks compute on CUDA, ``gloo`` on the
CPU; the small status/result exchanges always run on a ``gloo`` group, so they never touch GPU memory).

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from vhtool.checkpoint.atomic import AtomicFile
from vhtool.errors import InputError, OperationError, VhtoolError
from vhtool.models.scoring import (
    BadRecordError,
    InputItem,
    InputSpec,
    ScoredRecord,
    ScoreOptions,
    Scorer,
    ScoreSummary,
    SkippedRecord,
    _plan_window,
    _Prepared,
    _score_batches,
    _Tally,
    _validate_all,
    _windows,
    _with_output,
    check_output,
    read_inputs,
)

DEFAULT_TIMEOUT_S = 1800.0
_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------------------------------------- the environment
@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun / accelerate launch job, as read from the environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: str

    def to_json(self) -> dict[str, Any]:
        """The environment as a JSON-able dict."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
        }


def detect_distributed(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """Reads the launcher's variables; ``None`` for a plain single process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``).

    Args:
        environ: the environment to read (default ``os.environ``).

    Raises:
        InputError: ``WORLD_SIZE`` > 1 but the other variables are missing or inconsistent.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    numbers: dict[str, int] = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = env.get(name, "0" if name == "LOCAL_RANK" else "")
        try:
            numbers[name] = int(raw)
        except ValueError:
            raise InputError(
                f"{name}={raw!r} is not a number; start vhtool with torchrun or accelerate launch."
            ) from None
    world, rank, local = numbers["WORLD_SIZE"], numbers["RANK"], numbers["LOCAL_RANK"]
    if world < 1:
        raise InputError(f"WORLD_SIZE={world} must be at least 1.")
    if world == 1:
        return None
    if not 0 <= rank < world or local < 0:
        raise InputError(f"RANK={rank} (LOCAL_RANK={local}) does not fit WORLD_SIZE={world}.")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
    if missing:
        raise InputError(
            f"WORLD_SIZE={world} but {' and '.join(missing)} not set: start the ranks with torchrun or accelerate "
            "launch (vhtool never starts processes itself)."
        )
    return DistEnv(rank, world, local, env["MASTER_ADDR"], env["MASTER_PORT"])


def choose_backend(device: str, *, cuda_available: bool) -> str:
    """The process-group backend: ``nccl`` when the ranks score on CUDA, ``gloo`` otherwise.

    Args:
        device: the ``--device`` option (``cpu``, ``cuda`` or ``auto``).
        cuda_available: whether CUDA is usable here.
    """
    return "nccl" if cuda_available and device in ("cuda", "auto") else "gloo"


# ---------------------------------------------------------------------------------------------- outcomes & verdicts
@dataclass(frozen=True)
class RankOutcome:
    """What one rank reports at an exchange: ``ok`` (with its ``payload``), ``done`` (input exhausted), or ``fail``."""

    rank: int
    state: str
    code: int = 0
    message: str = ""
    record_index: int | None = None
    line: int | None = None
    payload: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class Verdict:
    """What all ranks do next: ``ok`` (go on), ``done`` (finish) or ``fail`` (stop with ``code`` and ``message``)."""

    state: str
    code: int = 0
    message: str = ""


def outcome_from_exception(exc: BaseException, *, rank: int) -> RankOutcome:
    """Turns what a rank caught into its report (a bad record keeps its index and line)."""
    if isinstance(exc, BadRecordError):
        return RankOutcome(rank, "fail", 2, str(exc), exc.index, exc.line)
    if isinstance(exc, VhtoolError):
        return RankOutcome(rank, "fail", exc.exit_code, _first_line(str(exc)))
    if isinstance(exc, BrokenPipeError):
        return RankOutcome(rank, "fail", 0, "the reader of stdout has gone")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return RankOutcome(rank, "fail", 1, f"out of memory ({_first_line(str(exc)) or type(exc).__name__})")
    return RankOutcome(rank, "fail", 1, f"{type(exc).__name__}: {_first_line(str(exc))}")


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def decide(outcomes: Sequence[RankOutcome], world_size: int) -> Verdict:
    """Rank 0's verdict on one exchange.

    A failure wins over everything. Among failures, a bad record wins (the first in input order); every rank
    reads every record, so each finds it, and it is reported as the share of rank ``index mod world_size``.
    Otherwise the lowest failing rank is named (a failure every rank reports alike is reported once, unnamed).
    Ranks disagreeing on the end of the input (a file that differs between nodes) is a failure too.

    Args:
        outcomes: one per rank, in rank order.
        world_size: the number of ranks.
    """
    fails = [o for o in outcomes if o.state == "fail"]
    if fails:
        records = [o for o in fails if o.line is not None and o.record_index is not None]
        if records:
            first = min(records, key=lambda o: (o.line, o.rank))
            owner = (first.record_index or 0) % world_size
            return Verdict("fail", first.code, f"rank {owner} of {world_size}: {first.message}")
        first = min(fails, key=lambda o: o.rank)
        if len(fails) == world_size and len({(o.code, o.message) for o in fails}) == 1:
            return Verdict("fail", first.code, first.message)
        others = [o.rank for o in fails if o.rank != first.rank]
        also = f" (rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} failed too)" if others else ""
        return Verdict("fail", first.code, f"rank {first.rank} of {world_size}: {first.message}{also}")
    states = {o.state for o in outcomes}
    if states == {"done"}:
        return Verdict("done")
    if "done" in states:
        ended = [o.rank for o in outcomes if o.state == "done"]
        return Verdict(
            "fail",
            1,
            f"the ranks read different inputs (rank {ended[0]} reached the end first); every rank must see the "
            "same input file.",
        )
    return Verdict("ok")


def raise_verdict(verdict: Verdict) -> None:
    """Raises the agreed failure on this rank (every rank raises the same code)."""
    if verdict.code == 0:
        raise BrokenPipeError(verdict.message)
    if verdict.code == 2:
        raise InputError(verdict.message)
    raise OperationError(verdict.message)


# ---------------------------------------------------------------------------------------------- the process group
class ProcessGroup:
    """The job's process group, joined through ``env://`` with a timeout, and the gloo group the exchanges use.

    Args:
        env: this rank's environment.
        device: the ``--device`` option (decides the backend).
        timeout_s: how long a collective may wait for the other ranks before the run fails.
    """

    def __init__(self, env: DistEnv, *, device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        import torch
        import torch.distributed as dist

        if timeout_s <= 0:
            raise InputError(f"--dist-timeout must be positive, got {timeout_s}.")
        self.env = env
        self.backend = choose_backend(device, cuda_available=torch.cuda.is_available())
        timeout = timedelta(seconds=timeout_s)
        self.owned = not dist.is_initialized()
        try:
            if self.backend == "nccl":
                torch.cuda.set_device(env.local_rank)
            if self.owned:
                dist.init_process_group(backend=self.backend, init_method="env://", timeout=timeout)
            elif dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
                raise InputError("a process group is already set up, and it does not match RANK/WORLD_SIZE.")
            default_backend = str(dist.get_backend()).lower()
            self.group: Any = None if default_backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
        except VhtoolError:
            raise
        except Exception as exc:
            raise OperationError(
                f"rank {env.rank}: could not join the process group at {env.master_addr}:{env.master_port} "
                f"({type(exc).__name__}: {_first_line(str(exc))})."
            ) from None

    def exchange(self, outcome: RankOutcome) -> tuple[Verdict, list[RankOutcome] | None]:
        """Gathers every rank's outcome on rank 0, which decides; returns the verdict (and, on rank 0, the outcomes).

        Raises:
            OperationError: the other ranks did not answer within the timeout (or the job is gone).
        """
        import torch.distributed as dist

        rank, world = self.env.rank, self.env.world_size
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        try:
            dist.gather_object(outcome, gathered, dst=0, group=self.group)
            box: list[Any] = [decide(gathered, world) if gathered is not None else None]
            dist.broadcast_object_list(box, src=0, group=self.group)
        except Exception as exc:
            raise OperationError(
                f"rank {rank} of {world}: lost contact with the other ranks ({type(exc).__name__}: "
                f"{_first_line(str(exc))}); nothing was written."
            ) from None
        verdict: Verdict = box[0]
        return verdict, gathered

    def close(self) -> None:
        """Leaves the process group (only if this object joined it)."""
        import torch.distributed as dist

        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


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
    progress: Callable[[int], None] | None = None,
    validate_first: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ScoreSummary | None:
    """:func:`vhtool.models.scoring.score_dataset` as one rank of a torchrun / accelerate launch job.

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
        progress: rank 0: called with the number of records just finished.
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
        return run.run(on_record=on_record, on_skip=on_skip, progress=progress, validate_first=validate_first)
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
        _validate_all(self.scorer, self.inputs, self.options)
        self.fmt, self.items = read_inputs(self.inputs, self.options.input_format)
        return "ok", None

    def run(
        self,
        *,
        on_record: Callable[[ScoredRecord], None] | None,
        on_skip: Callable[[SkippedRecord], None] | None,
        progress: Callable[[int], None] | None,
        validate_first: bool,
    ) -> ScoreSummary | None:
        rank, world = self.env.rank, self.env.world_size
        options = self.options
        try:
            self._step(self._check)
            self._step(self._load)
            if validate_first and options.on_error == "fail" and self.inputs.rereadable:
                self._step(self._validate)
            scorer = self.scorer
            assert scorer is not None
            tally = _Tally()
            windows = _windows(self.items, options.window)
            first_batch = 0  # batches are numbered over the whole run: batch b is rank b mod world's
            pending: tuple[list[_Prepared], list[int], list[list[int]]] | None = None
            current: tuple[list[_Prepared], list[int], list[list[int]]] | None = None
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
                window = next(windows, None)
                if window is None:
                    return "done", None
                prepared, good, lengths, plan = _plan_window(scorer, window, options, self.inputs.label())
                current = (prepared, lengths, plan)
                mine = [b for b in range(len(plan)) if (first_batch + b) % world == rank]
                try:
                    own = _score_batches(scorer, good, plan, mine)
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
                    self.out_file.commit()
                return "ok", None

            self._step(finish)
            if summary is not None and self.output is not None:
                summary = _with_output(summary, str(self.output))
            return summary
        finally:
            if self.out_file is not None:
                self.out_file.discard()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistEnv",
    "ProcessGroup",
    "RankOutcome",
    "Verdict",
    "choose_backend",
    "decide",
    "detect_distributed",
    "outcome_from_exception",
    "raise_verdict",
    "score_dataset_distributed",
]
