"""Saving into a folder that may hold an older checkpoint, so that nothing stale is ever loaded afterwards.

``transformers``' ``save_pretrained`` writes its files in place and removes only old ``-NNNNN-of-NNNNN``
shards. Saved into a folder ``vhtool init`` made, that leaves ``model-value-head.safetensors`` and the
index beside the new ``model.safetensors`` (an old value head that an index-first loader would read),
and it truncates a hard-linked base file in place (changing the base checkpoint too). Here the model
is saved into the folder's temporary sibling first, under the folder's lock (the one atomic writer,
:mod:`vhtool.checkpoint.atomic`); each new file is then renamed into place, the files of the older
checkpoint that the catalogue says the save supersedes are removed, and ``vhtool.json`` is brought up
to date so it never describes files that are gone.

A save knows its rank: a process that is not the main one (``is_main_process=False``, or a rank other
than 0 once ``torch.distributed`` is initialised — transformers' own rule) writes nothing and deletes
nothing in the folder; two processes that both save take turns on the lock, so the folder always ends
as one complete checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vhtool.checkpoint.atomic import locked_update, merge_into
from vhtool.checkpoint.catalogue import INDEX_FILE, MANIFEST_FILE, is_safetensors, save_supersedes
from vhtool.checkpoint.manifest import FileEntry, read_manifest, write_manifest
from vhtool.errors import CheckpointError, InputError

T = TypeVar("T")


def saves_on_this_rank(is_main_process: bool = True) -> bool:
    """Whether this process writes a checkpoint, by transformers' rule (``should_save_on_this_rank``).

    ``is_main_process`` as the caller passed it, and rank 0 when ``torch.distributed`` is initialised.
    """
    if not is_main_process:
        return False
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def save_replacing(
    save_directory: str | os.PathLike[str], write: Callable[[Path], T], *, main_process: bool = True
) -> T:
    """Runs ``write(tmp)`` (a ``save_pretrained`` into an empty temporary folder), then moves its files into place.

    Args:
        save_directory: the folder to save into; created when missing (its mode from the umask), else
            updated file by file.
        write: saves the model into the directory it is given and returns what ``save_pretrained`` returns.
        main_process: False on a process that must not write (see :func:`saves_on_this_rank`): ``write``
            still runs, because a sharded model gathers its tensors in collective calls every rank must
            join, but into a private scratch folder that is thrown away; ``save_directory`` is not touched.

    Returns:
        What ``write`` returned.

    Raises:
        InputError: ``save_directory`` is a file, not a folder.
    """
    if not main_process:
        scratch = Path(tempfile.mkdtemp(prefix="vhtool-rank-save-"))
        try:
            return write(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    dest = Path(os.path.abspath(os.fspath(save_directory)))
    if dest.is_symlink() and dest.is_dir():  # a link to a folder elsewhere: build beside the real one (same disk)
        dest = dest.resolve()
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest}: is a file, not a folder; save_pretrained saves into a folder.")
    with locked_update(dest) as tmp:
        result = write(tmp)
        merge_into(tmp, dest, superseded=save_supersedes)
        refresh_manifest(dest)
        return result


def refresh_manifest(directory: Path) -> None:
    """Makes ``vhtool.json`` (when there is one) record the weight files now present, by size.

    The files were just written by ``save_pretrained``: their sizes are recorded and their sha256 left
    out (hashing a large model on every save would double its cost); ``verify --hash`` checks content.
    Everything else the manifest says (role, source, reward adapter) is kept. A malformed manifest is
    left as it is, for ``verify`` to report.
    """
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        return
    weights = sorted(e.name for e in directory.iterdir() if e.is_file() and is_safetensors(e.name))
    files = {n: FileEntry(size=(directory / n).stat().st_size, how="save_pretrained") for n in weights}
    changes: dict[str, object] = {"files": files, "extra": {**manifest.extra, "saved_by": "save_pretrained"}}
    if manifest.layout is not None:
        changes["layout"] = "sharded" if (directory / INDEX_FILE).is_file() else "single-file"
    write_manifest(directory, manifest.replace(**changes))
