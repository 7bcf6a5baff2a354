"""What every command shares: option aliases, the output object, progress, and error mapping."""

from __future__ import annotations

import enum
import functools
import json
import os
import re
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast, get_args

import typer
import typer.core

from vhtool.checkpoint.interrupt import exit_code_of as interrupt_exit_code
from vhtool.checkpoint.interrupt import sigterm_raises
from vhtool.choices import LINK_MODES
from vhtool.errors import VhtoolError

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------------------------ typed choices
class Choice(str, enum.Enum):
    """Base of the CLI's choice types: a str enum whose members are the core's allowed values."""

    def __str__(self) -> str:  # `--help` defaults and messages show the value, not `LinkMode.auto`
        return str(self.value)


def choice_enum(name: str, values: Sequence[str | None]) -> type[Choice]:
    """A :class:`Choice` enum built from a core constant (``LINK_MODES``, ``TARGETS`` ...), so they cannot drift.

    ``None`` entries (the core's "not given") are left out: an option that may be omitted defaults to None.
    """
    members = {v: v for v in values if v is not None}
    functional: Any = Choice  # the functional Enum API (typeshed types Choice(...) as str's constructor)
    return cast("type[Choice]", functional(name, members))


if TYPE_CHECKING:  # mypy sees one static type; at run time each alias is an Enum built from the core's values
    LinkMode = Choice
else:
    LinkMode = choice_enum("LinkMode", LINK_MODES)


#: The metavars of the arguments and options that name a local path (or a model that may be one). They are
#: the words the help shows, so a new path option gets `~` expanded by being declared the way it is documented.
PATH_METAVARS = frozenset(
    {"OUT", "FILE", "DIR", "CHECKPOINT", "CHECKPOINT_B", "MODEL", "POLICY", "ADAPTER", "SRC", "PAIRS"}
)


def names_a_path(param: Any) -> bool:
    """Whether a parameter of a command names a local path: a path metavar, or declared as ``Path``."""
    if getattr(param, "metavar", None) in PATH_METAVARS:
        return True
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return annotation is Path or Path in get_args(annotation)


def expand_home(value: Any) -> Any:
    """``value`` with a leading ``~`` or ``~user`` expanded (a str stays a str, a Path a Path; lists item by item).

    A shell expands ``~`` only at the start of a word: ``--output=~/x``, ``-o=~/x`` or a quoted ``"~/x"`` reach
    vhtool as they are. A Hub id or ``builtin:`` name never starts with ``~``, so nothing else changes.
    """
    if isinstance(value, (list, tuple)):
        return type(value)(expand_home(v) for v in value)
    if isinstance(value, Path) and str(value).startswith("~"):
        return value.expanduser()
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    return value


#: Stands in for "-" while help text is wrapped, so that click's wrapper (which breaks after a hyphen) never
#: splits ``--per-token``, ``seq-cls`` or ``weights-only``; put back before the help is printed.
_HYPHEN = "\u2011"


def help_keeping_names_whole(command: Any, ctx: Any) -> str:
    """``command``'s help, wrapped to the terminal between words only (a name with a hyphen stays whole)."""
    formatter = ctx.make_formatter()

    def guarded(write: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            write(*(_guard(a) for a in args), **{k: _guard(v) for k, v in kwargs.items()})

        return call

    for name in ("write_text", "write_dl", "write_usage", "write_heading"):
        setattr(formatter, name, guarded(getattr(formatter, name)))
    command.format_help(ctx, formatter)
    return str(formatter.getvalue()).replace(_HYPHEN, "-").rstrip("\n")


def _guard(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("-", _HYPHEN)
    if isinstance(value, (list, tuple)):
        return type(value)(_guard(v) for v in value)
    return value


class VhtoolCommand(typer.core.TyperCommand):
    """A command whose help names its arguments in words (``MODEL``, not ``{model}`` or ``model <str>``), and
    whose path arguments and options (:func:`names_a_path`) have ``~`` expanded, once for every command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rest: list[str] = super().parse_args(ctx, args)
        for param in self.params:
            if param.name in ctx.params and names_a_path(param):
                ctx.params[param.name] = expand_home(ctx.params[param.name])
        return rest

    def get_help(self, ctx: Any) -> str:
        return help_keeping_names_whole(self, ctx)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.*)\}$", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args: list[tuple[str, str]] = []
        opts: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                # the metavar says what it is (MODEL, CHECKPOINT); the type name (<str>) says nothing more
                args.append((str(getattr(param, "display_name_raw", record[0])), record[1]))
            elif param.param_type_name == "option":
                opts.append(_fit_choices(record, formatter.width))
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


#: Options of the root command accepted after the subcommand too (``vhtool score ... --debug``).
ROOT_FLAGS = ("--debug",)
#: Options every command has, accepted before the subcommand too (``vhtool --json score ...``).
COMMAND_FLAGS = ("--json", "--quiet", "-q")


def hoist_global_options(args: Sequence[str], commands: Iterable[str]) -> list[str]:
    """``args`` with the global flags moved to the side of the subcommand that declares them.

    ``--debug`` belongs to the root, ``--json``/``--quiet`` to each command; a user writes either anywhere.
    Only flags (no values) move, and nothing after a ``--`` does.
    """
    names = set(commands)
    args = list(args)
    at = next((i for i, a in enumerate(args) if a in names), None)
    if at is None:
        return args
    before, command, after = args[:at], args[at], args[at + 1 :]
    end = after.index("--") if "--" in after else len(after)
    hoisted = [a for a in after[:end] if a in ROOT_FLAGS]
    lowered = [a for a in before if a in COMMAND_FLAGS]
    before = [a for a in before if a not in COMMAND_FLAGS] + hoisted
    after = lowered + [a for a in after[:end] if a not in ROOT_FLAGS] + after[end:]
    return [*before, command, *after]


class VhtoolGroup(typer.core.TyperGroup):
    """The root command: global flags in either position, and usage errors in one line that names the fix."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rest: list[str] = super().parse_args(ctx, hoist_global_options(args, self.commands))
        return rest

    def get_help(self, ctx: Any) -> str:
        return help_keeping_names_whole(self, ctx)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        call: dict[str, Any] = {
            "args": args,
            "prog_name": prog_name,
            "complete_var": complete_var,
            "windows_expand_args": windows_expand_args,
        }
        if not standalone_mode:
            return super().main(**call, standalone_mode=False, **extra)
        argv = list(args) if args is not None else sys.argv[1:]
        try:
            code = super().main(**call, standalone_mode=False, **extra)
        except typer.Abort:
            sys.stderr.write("Aborted.\n")
            sys.exit(1)
        except Exception as exc:  # the parser's usage errors (typer vendors click; we never import it)
            exit_code = getattr(exc, "exit_code", None)
            if not callable(getattr(exc, "show", None)) or not isinstance(exit_code, int):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `vhtool`/`vhtool score`: the help, as asked
                exc.show()  # type: ignore[attr-defined]
                sys.exit(exit_code)
            message = usage_message(exc)
            if "--json" in argv:
                write_json(error_doc(message, code=exit_code, kind="UsageError"))
            sys.stderr.write(f"Error: {message}\n")
            sys.exit(exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def usage_message(exc: Any) -> str:
    """A parser error in one line that names the fix: the close choice, ``-i FILE``, then where help is."""
    fmt = getattr(exc, "format_message", None)
    message = " ".join(str(fmt() if callable(fmt) else exc).split()).replace("Value error, ", "")
    ctx = getattr(exc, "ctx", None)
    param = getattr(exc, "param", None)
    choice = _choice_message(param, message)
    if choice is not None:
        message = choice
    extra = re.fullmatch(r"Got unexpected extra argument(?:\(s\)|s)? \((.*)\)", message)
    if extra is not None:
        words = extra.group(1).split()
        takes_input = ctx is not None and any("--input" in getattr(p, "opts", ()) for p in ctx.command.params)
        message = f"unexpected extra argument{'s' if len(words) > 1 else ''}: {' '.join(words)}"
        if takes_input and len(words) == 1:
            message += f"; to read a file give -i {words[0]}"
    if ctx is None or not hasattr(exc, "ctx"):
        return message
    end = "" if message.endswith((".", "?")) else "."
    return f"{message}{end} See '{ctx.command_path} --help'."


def _choice_message(param: Any, message: str) -> str | None:
    """``'norml' is not a choice for --v-head-init; did you mean 'normal'?`` for a choice option's bad value."""
    import difflib

    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    enums = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, enum.Enum)]
    found = re.search(r"(?:'([^']*)'|\"([^\"]*)\") is not one of ", message)
    if not enums or found is None:
        return None
    value = found.group(1) if found.group(1) is not None else found.group(2)
    allowed = [str(m.value) for m in enums[0]]
    option = max(getattr(param, "opts", None) or [str(param.name)], key=len)
    close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(map(repr, allowed))}."
    return f"{value!r} is not a choice for {option}; {hint}"


def _fit_choices(record: tuple[str, str], width: int) -> tuple[str, str]:
    """An option whose ``<a|b|...>`` choices would not fit a line of help lists them in its help text instead."""
    name, help_text = record
    found = re.search(r"<([^<>]*\|[^<>]*)>", name)
    if found is None or len(name) + 2 <= width:  # it fits its line (the help then goes on the next)
        return record
    import textwrap

    # a paragraph of its own, wrapped here between names (click would break `seq-cls` at its hyphen); `\b`
    # keeps click from rewrapping it
    listed = textwrap.fill(
        "CHOICE: " + ", ".join(found.group(1).split("|")) + ".", width=width // 2 - 4, break_on_hyphens=False
    )
    return name.replace(found.group(0), "CHOICE"), f"{help_text}\n\n\b\n{listed}"


def human_bytes(n: int) -> str:
    """A size in binary units, one style for every command: ``714 B``, ``32.0 KiB``, ``1.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def examples(*lines: str) -> str:
    """An ``Examples:`` epilog whose command lines are printed as written (``\\b`` stops the rewrapping)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines) + "\n"


def default_out(source: Path, suffix: str) -> Path:
    """The default OUT of a writing command: ``./<name>-<suffix>`` in the current directory.

    ``<name>`` is the input's name (a directory's, a Hub repo's or a built-in's). When the current directory is
    the input itself or lies inside it, OUT goes next to the input instead, so the input is never written into.
    """
    here = Path.cwd().resolve()
    src = Path(source)
    real = src.resolve()
    name = real.name if src.is_absolute() or src.exists() else src.name
    name = name or "model"
    if src.exists() and (here == real or real in here.parents):
        return Path(os.path.relpath(real.parent / f"{name}-{suffix}"))
    return Path(f"{name}-{suffix}")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout; logs go to stderr.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and --json output).")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace OUT if it exists (only once the new one is complete).")
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="OUT", help="Output directory (default: see above).", show_default=False),
]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", metavar="REV", help="Hub revision (branch, tag or commit).")
]
LinkOpt = Annotated[
    LinkMode,
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
AllowMissingOpt = Annotated[
    bool,
    typer.Option(
        "--allow-missing",
        help="Use the model even when backbone tensors are missing from the checkpoint (transformers initialises "
        "them at random) or unused by its architecture; without it the command fails (exit 1) naming them.",
    ),
]
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
        """A human-readable result line on stdout (suppressed by --json and --quiet); on a terminal it is wrapped
        between words like :meth:`warn` (a pipe gets it on one line, for scripts that read it)."""
        if not (self.quiet or self.json_mode):
            if self.console.is_terminal:
                message = self.fit(message, width=int(self.console.width))
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
        """``Warning: …`` on stderr, wrapped to the terminal between words (a path is never split)."""
        if not self.quiet:
            from rich.markup import escape

            text = self.fit(f"Warning: {message}")
            self.err.print(f"[yellow]Warning:[/yellow]{escape(text[len('Warning:') :])}")

    def note(self, message: str) -> None:
        """A plain-text note on stderr (suppressed by --json and --quiet), wrapped like :meth:`warn`."""
        if not (self.quiet or self.json_mode):
            from rich.markup import escape

            self.err.print(escape(self.fit(message)))

    def fit(self, text: str, *, width: int | None = None) -> str:
        """``text`` wrapped to ``width`` (default: stderr's) between words; a longer word (a path) stays whole."""
        import textwrap

        width = max(int(self.err.width) if width is None else width, 40)
        return textwrap.fill(text, width=width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)

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


#: Set while a command runs (a user's own setting wins): read by transformers / huggingface_hub when they load.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_VERBOSITY": "error",
}
#: Libraries whose warnings say nothing a vhtool user can act on (deprecations, internals of a load).
_LIBRARY_MODULES = r"(transformers|peft|torch|huggingface_hub|accelerate|safetensors|tokenizers|tqdm)(\.|$)"


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silences the libraries' warnings, logs and progress bars for one command, unless ``--debug``.

    Nothing is imported here (``vhtool --help`` stays fast): a library already loaded is quietened through
    its own verbosity API and restored afterwards; one loaded during the command reads the environment
    variables set here. Deprecation and future warnings are dropped; vhtool's own warnings still show.
    """
    if debug_enabled():
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    undo: list[Callable[[], None]] = []
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is not None:
        level = tf_logging.get_verbosity()
        bars = tf_logging.is_progress_bar_enabled()
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
        undo.append(lambda: tf_logging.set_verbosity(level))
        if bars:
            undo.append(tf_logging.enable_progress_bar)
    hub_utils = sys.modules.get("huggingface_hub.utils")
    if hub_utils is not None:
        hub_logging = hub_utils.logging
        hub_level = hub_logging.get_verbosity()
        hub_bars = not hub_utils.are_progress_bars_disabled()
        hub_logging.set_verbosity_error()
        if hub_bars:
            hub_utils.disable_progress_bars()
            undo.append(hub_utils.enable_progress_bars)
        undo.append(lambda: hub_logging.set_verbosity(hub_level))
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("ignore", module=_LIBRARY_MODULES)
            yield
    finally:
        for step in reversed(undo):
            step()
        for key, old in saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def handle_errors(fn: F) -> F:
    """Maps exceptions to the documented exit codes: VhtoolError -> its code; anything else -> 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _json_pending
        json_mode = bool(kwargs.get("json_out"))
        _json_pending = None
        try:
            with quiet_libraries(), sigterm_raises(always=True):  # SIGTERM cleans up like Ctrl-C, then exits 143
                result = fn(*args, **kwargs)
        except typer.Exit:
            _flush_json(json_mode)
            raise
        except BaseException as exc:
            message, code, kind, problems = _describe_failure(exc)
            if kind.startswith("Hub"):  # a typo of a local folder reached the Hub: say so first
                message = _local_typo(kwargs.values(), message) + message
            if json_mode:
                doc = dict(_json_pending or {})
                doc.update(error_doc(message, code=code, kind=kind, problems=problems))
                _json_pending = None
                write_json(doc)
            raise fail(message, code) from None
        _flush_json(json_mode)
        return result

    return wrapper  # type: ignore[return-value]


def _local_typo(args: Iterable[Any], message: str) -> str:
    """``no local folder 'polcy' (did you mean 'policy'?); `` for an argument the Hub was asked for instead.

    Only for a string argument the Hub message names, that is not an existing path, and whose folder holds a
    folder with a close name: a plain Hub id (``org/name`` with no such local ``org``) gets no hint.
    """
    import difflib

    for value in args:
        if not isinstance(value, str) or f"'{value}'" not in message or Path(value).exists():
            continue
        path = Path(value)
        parent = path.parent
        try:
            folders = [d.name for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".")]
        except OSError:
            continue
        close = difflib.get_close_matches(path.name, folders, n=1, cutoff=0.75)
        if close:
            near = str(parent / close[0]) if str(parent) != "." else close[0]
            return f"no local folder {value!r} (did you mean {near!r}?); "
        if str(parent) == ".":
            return f"no local folder {value!r}; "
    return ""


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
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C (130) or SIGTERM (143): the temporary output is gone
        code = interrupt_exit_code(exc)
        return f"interrupted ({signal.Signals(code - 128).name}); nothing was written.", code, "Interrupted", None
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
