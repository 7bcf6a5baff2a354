"""Saving into a folder that may hold an older checkpoint, so that nothing stale is ever loaded afterwards.

``transformers``' ``save_pretrained`` writes its files in place and removes only old ``-NNNNN-of-NNNNN``
shards. Saved into a folder ``vhtool init`` made, that leaves ``model-value-head.safetensors`` and the
index beside the new ``model.safetensors`` (an old value head that an index-first loader would read),
and it truncates a hard-linked base file in place (changing the base checkpoint too). Here the model
is saved into a temporary sibling first; each new file is then renamed into place (a new inode: a
hard-linked older file is never written through), weight files of the older checkpoint that the new
save did not write are removed, and ``vhtool.json`` is brought up to date so it never describes files
that are gone.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vhtool.checkpoint.layout import INDEX_FILE
from vhtool.checkpoint.manifest import FileEntry, read_manifest, write_manifest
from vhtool.checkpoint.names import MANIFEST_FILE
from vhtool.errors import CheckpointError

T = TypeVar("T")

#: Top-level files a new save supersedes when it did not write them itself (weights, indexes, PEFT adapter).
STALE_PATTERNS = (
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*.bin",
    "pytorch_model.bin.index.json",
    "value_head.safetensors",
    "value_head.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "adapter_config.json",
)


def save_replacing(save_directory: str | os.PathLike[str], write: Callable[[Path], T]) -> T:
    """Runs ``write(tmp)`` (a ``save_pretrained`` into an empty temporary folder), then moves its files into place.

    Args:
        save_directory: the folder to save into; created when missing, else updated file by file.
        write: saves the model into the directory it is given and returns what ``save_pretrained`` returns.

    Returns:
        What ``write`` returned.
    """
    dest = Path(save_directory)
    parent = dest.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = Path(tempfile.mkdtemp(prefix=f".{dest.name}.vhtool-save-", dir=parent))
    try:
        assert tmp is not None
        result = write(tmp)
        if not dest.exists():
            os.rename(tmp, dest)
            tmp = None
            return result
        written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        for rel in written:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(tmp / rel, target)  # a new inode: a hard-linked older file is never changed in place
        new_top = {str(r) for r in written if len(r.parts) == 1}
        for entry in sorted(dest.iterdir()):
            stale = entry.name not in new_top and any(fnmatch.fnmatchcase(entry.name, p) for p in STALE_PATTERNS)
            if stale and (entry.is_file() or entry.is_symlink()):
                entry.unlink()
        refresh_manifest(dest)
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


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
    weights = sorted(e.name for e in directory.iterdir() if e.is_file() and e.name.endswith(".safetensors"))
    files = {n: FileEntry(size=(directory / n).stat().st_size, how="save_pretrained") for n in weights}
    changes: dict[str, object] = {"files": files, "extra": {**manifest.extra, "saved_by": "save_pretrained"}}
    if manifest.layout is not None:
        changes["layout"] = "sharded" if (directory / INDEX_FILE).is_file() else "single-file"
    write_manifest(directory, manifest.replace(**changes))
