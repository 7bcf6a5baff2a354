"""The process-group side of a distributed ``vhtool score``: where this rank stands, and how ranks agree.

vhtool starts no processes and opens no sockets of its own: the launcher (``torchrun`` / ``accelerate launch``)
starts K copies of the command and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; each copy joins the process group through that ``env://`` rendezvous (backend ``nccl`` when the
ranks compute on CUDA, ``gloo`` on the CPU; the small status/result exchanges always run on a ``gloo`` group, so
they never touch GPU memory).

An exchange is where failures meet: every rank reports a :class:`RankOutcome` (``ok`` with its payload, ``done``,
or ``fail``), rank 0 decides one :class:`Verdict` for all (:func:`decide`) and broadcasts it, so no rank is ever
left waiting in a collective for one that has died, and all ranks stop with the same exit code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from vhtool.errors import InputError, OperationError, VhtoolError
from vhtool.models.scoring.results import BadRecordError

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
            # gloo aborts a process ("terminate called without an active exception") whose peer tears its
            # connections down mid-exchange. A barrier alone is not enough: rank 0 may leave it while another rank
            # is still reading its last message. So every rank also says, through the job's key-value store (not
            # gloo), that it is out of the barrier, and none tears down before all have said so.
            world = self.env.world_size
            try:
                dist.barrier(group=self.group)
                store = dist.distributed_c10d._get_default_store()
                store.set(f"vhtool/closing/{self.env.rank}", "1")
                store.wait([f"vhtool/closing/{r}" for r in range(world)], timedelta(seconds=60))
            except Exception:  # a peer already gone (or the store with it): nothing left to wait for
                pass
            dist.destroy_process_group()


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
]
