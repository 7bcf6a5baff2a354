"""What every command shares: option aliases, the output object, progress, and error mapping."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from vhtool.errors import VhtoolError

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout; logs go to stderr.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and --json output).")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace OUT if it exists (only once the new one is complete).")
]
OutOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output directory.", show_default=False)]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
LinkOpt = Annotated[
    str,
    typer.Option(
        "--link",
        help=(
            "How base weight files get into OUT: auto (reflink if the filesystem can, else copy), copy, reflink, "
            "hardlink or symlink. Caveat: with hardlink, a tool that later rewrites a base file IN PLACE changes "
            "both checkpoints (they are one file); symlink breaks if the source moves. Linked files are hashed "
            "only with --hash."
        ),
    ),
]

HashLinksOpt = Annotated[bool, typer.Option("--hash", help="Also sha256 linked (not copied) weight files.")]
NoFsyncOpt = Annotated[bool, typer.Option("--no-fsync", help="Skip the fsync before the final rename.")]

_debug = False


def set_debug(value: bool) -> None:
    global _debug
    _debug = value


def debug_enabled() -> bool:
    return _debug or os.environ.get("VHTOOL_DEBUG", "") not in ("", "0", "false")


class Out:
    """Sends data to stdout and everything else (logs, warnings, progress) to stderr."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet

    # Created on first use, so that a --json run never imports rich (inspect-layers start-up time).
    @functools.cached_property
    def err(self) -> Any:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    @functools.cached_property
    def console(self) -> Any:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @property
    def show_progress(self) -> bool:
        return not (self.json_mode or self.quiet) and sys.stderr.isatty()

    def data(self, doc: dict[str, Any]) -> None:
        """The one JSON object of ``--json`` mode, printed when the command ends (a failure adds its ``error``)."""
        global _json_pending
        _json_pending = doc

    def info(self, message: str) -> None:
        if not (self.quiet or self.json_mode):
            self.err.print(message)

    def result(self, message: str) -> None:
        """A human-readable result line on stdout (suppressed by --json and --quiet)."""
        if not (self.quiet or self.json_mode):
            self.console.print(message)

    def finish(self, result: Any, *, notes: Iterable[str], line: Callable[[], str]) -> None:
        """Ends a writing command: its notes as warnings, then ``result.to_json()`` or the human ``line()``."""
        for note in notes:
            self.warn(note)
        if self.json_mode:
            self.data(result.to_json())
        else:
            self.result(line())

    def warn(self, message: str) -> None:
        if not self.quiet:
            from rich.markup import escape

            self.err.print(f"[yellow]Warning:[/yellow] {escape(message)}")

    @contextmanager
    def progress(self, description: str) -> Iterator[Callable[[int], Callable[[int], None]] | None]:
        """Yields a progress factory (total bytes -> advance callback), or None when not on a terminal."""
        if not self.show_progress:
            yield None
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.err,
            transient=True,
        ) as bar:

            def factory(total: int) -> Callable[[int], None]:
                task = bar.add_task(description, total=total)
                return lambda n: bar.advance(task, n)

            yield factory


#: The ``--json`` document of the running command, printed when it ends (with its error, if it fails).
_json_pending: dict[str, Any] | None = None


def write_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def error_doc(message: str, *, code: int, kind: str, problems: list[str] | None = None) -> dict[str, Any]:
    """The ``error`` object of a failed ``--json`` run (schema in docs/json-output.md)."""
    err: dict[str, Any] = {"type": kind, "message": one_line(message)}
    if problems:
        err["problems"] = problems
    return {"error": err, "exit_code": code}


def one_line(message: str) -> str:
    return " ".join(str(message).split("\n")[0:1]).strip() or "unknown error"


def fail(message: str, code: int) -> typer.Exit:
    """Prints a one-line error to stderr and returns the Exit to raise."""
    sys.stderr.write(f"Error: {one_line(message)}\n")
    return typer.Exit(code)


def os_error_message(exc: OSError) -> str:
    """An OSError in words, with the path it concerns: ``/x/y: permission denied``."""
    reason = (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where is not None else reason


def handle_errors(fn: F) -> F:
    """Maps exceptions to the documented exit codes: VhtoolError -> its code; anything else -> 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _json_pending
        json_mode = bool(kwargs.get("json_out"))
        _json_pending = None
        try:
            result = fn(*args, **kwargs)
        except typer.Exit:
            _flush_json(json_mode)
            raise
        except BaseException as exc:
            message, code, kind, problems = _describe_failure(exc)
            if json_mode:
                doc = dict(_json_pending or {})
                doc.update(error_doc(message, code=code, kind=kind, problems=problems))
                _json_pending = None
                write_json(doc)
            raise fail(message, code) from None
        _flush_json(json_mode)
        return result

    return wrapper  # type: ignore[return-value]


def _flush_json(json_mode: bool) -> None:
    global _json_pending
    if json_mode and _json_pending is not None:
        write_json(_json_pending)
    _json_pending = None


def _describe_failure(exc: BaseException) -> tuple[str, int, str, list[str] | None]:
    """(message, exit code, type name, problems) of a failure; re-raises what is not a failure (SystemExit)."""
    if isinstance(exc, VhtoolError):
        if debug_enabled():
            traceback.print_exception(exc)
        return str(exc), exc.exit_code, type(exc).__name__, getattr(exc, "problems", None) or None
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; nothing was written.", 130, "Interrupted", None
    if isinstance(exc, OSError):  # an OS failure the core did not word itself: the path and the reason
        if debug_enabled():
            traceback.print_exception(exc)
        return os_error_message(exc), 1, "OSError", None
    if isinstance(exc, Exception):  # an unexpected failure: one line, traceback only on request
        if debug_enabled():
            traceback.print_exception(exc)
        hint = "" if debug_enabled() else " (run with VHTOOL_DEBUG=1 for a traceback)"
        return f"{type(exc).__name__}: {exc}{hint}", 1, type(exc).__name__, None
    raise exc
