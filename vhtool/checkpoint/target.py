"""What an output path may be: the one rule every writing command checks before it does any work.

``--force`` means "replace a previous vhtool output", nothing more. An output OUT may be written when

* it does not exist, or
* with ``--force``: it is an empty directory, or a directory whose entries are all checkpoint files
  (what vhtool, ``init`` from a source, or ``save_pretrained`` writes: the catalogue's
  :func:`~vhtool.checkpoint.catalogue.force_may_replace`) plus PEFT adapter subfolders holding only such
  files; for a file output (``score -o``), a previous score output.

It is refused, with or without ``--force``, when it is a symbolic link, a plain file (directory
commands), a directory holding anything else (``.git``, ``*.py``, data files...), the current
working directory or one of its ancestors, ``/``, the home directory or one of its ancestors, an
input, inside an input, or a directory that contains an input. Inputs are compared by real path
*and* device/inode, so every spelling (``../pol``, ``./../pol``, an absolute path, a symlink, a bind
mount) is the same input; the directories that an input's symlinked files point into count as
inputs too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from vhtool.checkpoint.catalogue import ADAPTER_CONFIG, adapter_folder_may_hold, force_may_replace
from vhtool.errors import InputError, OutputExistsError

_REMOVE_YOURSELF = "choose another output with -o, or remove it yourself if you are sure"
_REMOVE_YOURSELF_CAP = "Choose another output with -o, or remove it yourself if you are sure"


def foreign_entry(directory: Path) -> str | None:
    """The first entry of ``directory`` that is not a checkpoint file (relative name), or None when all are.

    Subdirectories are accepted only as PEFT adapter folders (an ``adapter_config.json`` and nothing but
    checkpoint files, no deeper folders), like the reward-adapter subfolder vhtool writes.
    """
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_symlink():
            if not force_may_replace(entry.name) or entry.is_dir():
                return entry.name
            continue  # a weight file written with --link symlink
        if entry.is_dir():
            inner = sorted(os.scandir(entry.path), key=lambda e: e.name)
            names = {e.name for e in inner}
            if ADAPTER_CONFIG not in names or entry.name.startswith("."):
                return entry.name + "/"
            for sub in inner:
                if sub.is_dir() or not adapter_folder_may_hold(sub.name):
                    return f"{entry.name}/{sub.name}"
            continue
        if not entry.is_file() or not force_may_replace(entry.name):
            return entry.name
    return None


def _stat(p: Path) -> os.stat_result | None:
    try:
        return os.stat(p)
    except OSError:
        return None


def _same(path: Path, other: os.stat_result) -> bool:
    st = _stat(path)
    return st is not None and os.path.samestat(st, other)


def _is_same_or_inside(path: Path, root_stat: os.stat_result) -> bool:
    """True when ``path`` (resolved) or one of its ancestors is the directory ``root_stat`` describes."""
    return any(_same(p, root_stat) for p in (path, *path.parents))


def input_roots(inputs: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    """The inputs plus the directories their symlinked files point into (``--link symlink`` outputs, Hub caches)."""
    roots: list[Path] = []
    for item in inputs:
        if item is None:
            continue
        p = Path(item)
        if not (p.exists() or p.is_symlink()):
            continue
        roots.append(p)
        if p.is_dir() and not p.is_symlink():
            try:
                entries = list(os.scandir(p))
            except OSError:
                continue
            for e in entries:
                if e.is_symlink():
                    target = Path(os.path.realpath(e.path))
                    roots.append(target.parent if not target.is_dir() else target)
    return roots


def check_output_target(
    out: str | os.PathLike[str],
    *,
    force: bool,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
    kind: str = "dir",
) -> Path:
    """Fails early (before any work) unless ``out`` may be written under the rule of this module.

    Args:
        out: the output path as the user spelled it (``''`` and ``.`` are the current directory).
        force: the user passed ``--force``: replace a previous vhtool output.
        inputs: every path the command reads (policy, source, adapter, input file).
        kind: ``"dir"`` for checkpoint directories, ``"file"`` for a single output file (``score -o``).

    Returns:
        ``out`` normalised (``a/../b`` is ``b``), relative when it was spelled relative: what to write and report.

    Raises:
        OutputExistsError: ``out`` is a previous vhtool output and ``force`` is false (exit 2).
        InputError: ``out`` may never be replaced, or its parent directory is unusable (exit 2).
    """
    spelled = os.fspath(out)
    path = Path(os.path.abspath(spelled or "."))
    real = Path(os.path.realpath(path))
    shown = spelled or "''"

    _refuse_protected(path, real, shown)
    for root in input_roots(inputs):
        root_stat = _stat(root)
        if root_stat is None:
            continue
        if _is_same_or_inside(real, root_stat):
            what = "is" if _same(real, root_stat) else "is inside"
            noun = "the input file" if root.is_file() else "the input"
            raise InputError(f"{shown}: {what} {noun} {root}; the output must be a new path outside every input.")
        out_stat = _stat(real)
        if out_stat is not None and _is_same_or_inside(Path(os.path.realpath(root)), out_stat):
            raise InputError(f"{shown}: contains the input {root}; {_REMOVE_YOURSELF}.")

    if path.is_symlink():
        raise InputError(f"{shown}: is a symbolic link; vhtool never replaces links. {_REMOVE_YOURSELF_CAP}.")
    if path.exists():
        if kind == "file":
            _check_existing_file(path, shown, force=force)
        else:
            _check_existing_dir(path, shown, force=force)

    parent = path.parent
    if not parent.is_dir():
        if parent.exists() or any(p.exists() and not p.is_dir() for p in parent.parents):
            raise InputError(f"{shown}: a parent of the output is a file, not a directory.")
        raise InputError(f"{parent}: the output's parent directory does not exist; create it (mkdir -p {parent}).")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: not writable; choose another output with -o.")
    return Path(os.path.normpath(spelled))


def _refuse_protected(path: Path, real: Path, shown: str) -> None:
    real_stat = _stat(real)
    if real_stat is None:
        return
    cwd = Path(os.getcwd())
    if _is_same_or_inside(cwd, real_stat):
        what = "the current directory" if _same(cwd, real_stat) else "an ancestor of the current directory"
        raise InputError(f"{shown}: is {what}; vhtool never replaces it. Choose a new directory with -o.")
    home = Path(os.path.expanduser("~"))
    if _is_same_or_inside(home, real_stat):
        raise InputError(f"{shown}: is your home directory or contains it; choose a new directory with -o.")


def _check_existing_dir(path: Path, shown: str, *, force: bool) -> None:
    if not path.is_dir():
        raise InputError(f"{shown}: is a file, not a checkpoint directory vhtool wrote; {_REMOVE_YOURSELF}.")
    try:
        foreign = foreign_entry(path)
    except OSError as exc:
        raise InputError(f"{shown}: cannot be read ({exc.strerror or exc}); choose another output with -o.") from None
    if foreign is not None:
        raise InputError(
            f"{shown}: exists and holds {foreign!r}, which is not a checkpoint file; vhtool replaces only "
            f"directories of checkpoint files. {_REMOVE_YOURSELF_CAP}."
        )
    if not force:
        # Say what OUT is: an empty folder (a `mkdir out` before the command) is not "checkpoint files only".
        what = "it is empty" if _is_empty(path) else "it holds checkpoint files only"
        raise OutputExistsError(f"{shown} already exists; pass --force to replace it ({what}).")


def _is_empty(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _check_existing_file(path: Path, shown: str, *, force: bool) -> None:
    if path.is_dir():
        raise InputError(f"{shown}: is a directory; -o takes a file name.")
    if not path.is_file():
        raise InputError(f"{shown}: is not a regular file; {_REMOVE_YOURSELF}.")
    if not looks_like_score_output(path):
        raise InputError(f"{shown}: exists and is not a vhtool score output; {_REMOVE_YOURSELF}.")
    if not force:
        raise OutputExistsError(f"{shown} exists; pass --force to replace it (it is a previous score output).")


def looks_like_score_output(path: Path) -> bool:
    """True for an empty file or one whose first line is a score or evaluate record (``{"index": …, "score": …}``,
    ``{"index": …, "margin": …}``)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
    except OSError:
        return False
    if not first.strip():
        return True
    try:
        doc = json.loads(first)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(doc, dict) and "index" in doc and ("score" in doc or "error" in doc or "margin" in doc)
