"""Stopping work promptly on Ctrl-C (SIGINT) and SIGTERM, and cleaning up before the process ends.

Python raises :class:`KeyboardInterrupt` in the main thread only; threads copying or hashing shards
never see it. So the thread that receives an interrupt raises the process-wide stop flag
(:func:`stopping`) before it waits for its helpers, and every copy and hash loop calls
:func:`check` between chunks: a worker leaves within one chunk, and no queued shard starts.

SIGTERM's default action ends the process without running any ``finally``, which would leave a
temporary output behind. :func:`sigterm_raises` turns it into :class:`Interrupted` for a region (the
writers use it when nobody else handles SIGTERM; the CLI for the whole command), so the clean-up runs.

Standard library only; nothing here prints.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_STOP = threading.Event()
_signum: int = signal.SIGINT


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGINT or SIGTERM); a :class:`KeyboardInterrupt`, so ``except Exception``
    never swallows it.

    Attributes:
        signum: the signal that asked.
        exit_code: ``128 + signum``, the shell's convention (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


def exit_code_of(exc: BaseException) -> int:
    """The exit status for an interrupt: ``128 + signal`` (130 for a plain :class:`KeyboardInterrupt`)."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def requested() -> bool:
    """True while the process-wide stop flag is raised."""
    return _STOP.is_set()


def check() -> None:
    """Raises :class:`Interrupted` when the stop flag is raised; copy and hash loops call it between chunks."""
    if _STOP.is_set():
        raise Interrupted(_signum)


@contextmanager
def stopping(exc: BaseException) -> Iterator[None]:
    """Raises the stop flag while the caller, hit by ``exc``, waits for its worker threads to leave.

    Only an interrupt raises the flag (an ordinary error stops nothing else in the process). The thread
    that raised it lowers it again once the block (its waiting) is over, so a later operation in the same
    process (a REPL after Ctrl-C) runs normally; a second interrupt during the wait leaves it raised, which
    is what a process about to end wants.
    """
    global _signum
    if not isinstance(exc, KeyboardInterrupt):
        yield
        return
    owner = not _STOP.is_set()
    if owner:
        _signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
        _STOP.set()
    yield
    if owner:
        _STOP.clear()


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def sigterm_raises(*, always: bool = False) -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` in the main thread, so clean-up code runs.

    Args:
        always: install the handler whatever handled SIGTERM before (the CLI, which owns its process).
            Otherwise it is installed only where SIGTERM still has its default action; and a SIGTERM that
            arrives is re-delivered with that default action after the clean-up, so the process still ends
            the way its owner expects (killed by SIGTERM), only tidily.

    Outside the main thread nothing is installed (Python runs handlers in the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not always and previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    except Interrupted as exc:
        signal.signal(signal.SIGTERM, previous)
        if not always and exc.signum == signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)  # the default action, now that the temporary files are gone
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["Interrupted", "check", "exit_code_of", "requested", "sigterm_raises", "stopping"]
