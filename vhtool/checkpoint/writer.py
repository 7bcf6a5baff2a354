"""Writing safetensors files from pieces: tensors copied from other files by range, or small new tensors.

A file is planned as a list of tensors, each either a byte range of an existing file or in-memory
bytes. Adjacent ranges of the same source are merged into one kernel copy, so rewriting a file
with a few tensors added or dropped costs one ``copy_file_range`` per run of kept tensors.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vhtool.checkpoint.copyio import FileRecord, Progress, _kernel_copy, beside, hash_range
from vhtool.checkpoint.safetensors_io import build_header


@dataclass(frozen=True)
class RangeSource:
    """``length`` bytes of ``path`` starting at absolute offset ``offset``."""

    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: RangeSource | bytes

    @property
    def nbytes(self) -> int:
        return self.data.length if isinstance(self.data, RangeSource) else len(self.data)


def _segments(header: bytes, tensors: Sequence[PlannedTensor]) -> list[RangeSource | bytes]:
    """The output's bytes in order, with adjacent ranges of one source merged."""
    segs: list[RangeSource | bytes] = [header]
    for t in tensors:
        last = segs[-1]
        d = t.data
        if (
            isinstance(d, RangeSource)
            and isinstance(last, RangeSource)
            and last.path == d.path
            and last.offset + last.length == d.offset
        ):
            segs[-1] = RangeSource(last.path, last.offset, last.length + d.length)
            continue
        segs.append(d)
    return segs


def write_safetensors(
    dst: Path,
    tensors: Sequence[PlannedTensor],
    *,
    metadata: Mapping[str, str] | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    fsync: bool = False,
) -> FileRecord:
    """Writes a safetensors file whose data region follows ``tensors`` in order; returns size and sha256.

    Range tensors are copied by the kernel; a second thread hashes the same bytes from the page
    cache, so the sha256 costs no extra pass over the output.
    """
    header, _ = build_header([(t.name, t.dtype, t.shape, t.nbytes) for t in tensors], metadata)
    segs = _segments(header, tensors)
    hasher = hashlib.sha256()

    def _hash(cancel: threading.Event) -> None:
        view = memoryview(bytearray(8 * 1024 * 1024))
        for seg in segs:
            if isinstance(seg, bytes):
                hasher.update(seg)
                continue
            with open(seg.path, "rb", buffering=0) as fh:
                hash_range(fh, hasher, start=seg.offset, length=seg.length, view=view, cancel=cancel)

    size = 0
    # The hasher stops with the copy (an error, Ctrl-C): it never reads on through a file nobody wants.
    with beside(_hash):
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            for seg in segs:
                if isinstance(seg, bytes):
                    view = memoryview(seg)
                    while view:
                        written = os.pwrite(fd, view, size)
                        view = view[written:]
                        size += written
                    continue
                with open(seg.path, "rb", buffering=0) as fsrc:
                    _kernel_copy(fsrc.fileno(), fd, seg.offset, size, seg.length, progress)
                size += seg.length
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return FileRecord(name=name or dst.name, size=size, sha256=hasher.hexdigest(), how="write")
