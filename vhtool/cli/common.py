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
        """The one JSON object of ``--json`` mode."""
        sys.stdout.write(json.dumps(doc, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()

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


def fail(message: str, code: int) -> typer.Exit:
    """Prints a one-line error to stderr and returns the Exit to raise."""
    first = " ".join(str(message).split("\n")[0:1]).strip() or "unknown error"
    sys.stderr.write(f"Error: {first}\n")
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Maps exceptions to the documented exit codes: VhtoolError -> its code; anything else -> 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except VhtoolError as exc:
            if debug_enabled():
                traceback.print_exc()
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; nothing was written.", 130) from None
        except Exception as exc:  # an unexpected failure: one line, traceback only on request
            if debug_enabled():
                traceback.print_exc()
            hint = "" if debug_enabled() else " (run with VHTOOL_DEBUG=1 for a traceback)"
            raise fail(f"{type(exc).__name__}: {exc}{hint}", 1) from None

    return wrapper  # type: ignore[return-value]
