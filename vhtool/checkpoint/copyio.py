"""Moving weight bytes without Python memory: kernel copies, reflinks, links, and hashing alongside.

The copy runs in the kernel (``os.copy_file_range``, which also reflinks on filesystems that can);
the sha256 is computed by a second thread reading the same bytes from the page cache, so copying
and hashing overlap on two cores and no chunk is read twice by Python.

Every copy and hash loop checks :func:`vhtool.checkpoint.interrupt.check` between chunks, and the pool
starts no queued file once an interrupt arrived: Ctrl-C stops the work within one chunk per thread.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vhtool.checkpoint import interrupt
from vhtool.choices import LINK_MODES as LINK_MODES
from vhtool.errors import InputError, OperationError

_FICLONE = 0x40049409
_CHUNK = 16 * 1024 * 1024  # one kernel copy call: also how far a thread runs on after Ctrl-C
_HASH_CHUNK = 8 * 1024 * 1024

Progress = Callable[[int], None]
T = TypeVar("T")


@dataclass(frozen=True)
class FileRecord:
    """A weight file as written: relative name, size, sha256 (None when linked and not hashed), how."""

    name: str
    size: int
    sha256: str | None
    how: str

    def to_json(self) -> dict[str, Any]:
        """The record as the commands' ``--json`` output lists it: name, size, sha256, how."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "how": self.how}


def hash_range(
    fh: io.FileIO,
    h: hashlib._Hash,
    *,
    start: int,
    length: int,
    view: memoryview | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Feeds ``length`` bytes of the open file ``fh`` from ``start`` into ``h``, in constant memory.

    Args:
        fh: a file opened with ``open(path, "rb", buffering=0)``.
        h: the hash to update.
        start: the first byte.
        length: how many bytes.
        view: a reusable read buffer (8 MiB by default).
        progress: called with each chunk's byte count.
        cancel: set by the thread that wants this hash no longer (its copy failed); checked between chunks.

    Raises:
        OperationError: the file ends before ``start + length`` (it shrank, or was truncated).
        Interrupted: the process is stopping (Ctrl-C, SIGTERM); or ``cancel`` was set.
    """
    view = view if view is not None else memoryview(bytearray(_HASH_CHUNK))
    fh.seek(start)
    remaining = length
    while remaining > 0:
        interrupt.check()
        if cancel is not None and cancel.is_set():
            raise interrupt.Interrupted()
        n = fh.readinto(view[: min(len(view), remaining)])
        if not n:
            raise OperationError(f"{fh.name}: file shrank while being read.")
        h.update(view[:n])
        remaining -= n
        if progress:
            progress(n)


def hash_file(
    path: Path,
    *,
    start: int = 0,
    length: int | None = None,
    h: hashlib._Hash | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """sha256 of ``length`` bytes of ``path`` from ``start`` (whole file by default), in constant memory."""
    h = h or hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        size = length if length is not None else os.fstat(fh.fileno()).st_size - start
        hash_range(fh, h, start=start, length=size, cancel=cancel)
    return h.hexdigest()


@contextmanager
def beside(work: Callable[[threading.Event], None], *, name: str = "vhtool-hash") -> Iterator[None]:
    """Runs ``work(cancel)`` on a helper thread while the block runs; re-raises the helper's error after it.

    When the block fails (an error, Ctrl-C), ``cancel`` is set and, for an interrupt, the process-wide stop
    flag too, so the helper leaves at its next chunk instead of hashing the rest of a file nobody wants.
    """
    cancel = threading.Event()
    error: list[BaseException] = []

    def _run() -> None:
        try:
            work(cancel)
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    worker = threading.Thread(target=_run, name=name)
    worker.start()
    try:
        yield
    except BaseException as exc:
        cancel.set()
        with interrupt.stopping(exc):
            worker.join()
        raise
    worker.join()
    if error:
        raise error[0]


def _kernel_copy(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int, progress: Progress | None) -> None:
    remaining = length
    while remaining > 0:
        interrupt.check()
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(remaining, _CHUNK), src_off, dst_off)
        except OSError as exc:
            if exc.errno in (18, 38, 95, 22):  # EXDEV, ENOSYS, EOPNOTSUPP, EINVAL: fall back to sendfile
                os.lseek(dst_fd, dst_off, os.SEEK_SET)
                n = os.sendfile(dst_fd, src_fd, src_off, min(remaining, _CHUNK))
            else:
                raise
        if n == 0:
            raise OperationError("source file shrank during the copy.")
        # Start writeback of what was just copied: the final fsync then waits for little, and dirty pages never
        # pile up to the size of the model. (On Linux, FADV_DONTNEED starts asynchronous writeback of dirty pages.)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(dst_fd, dst_off, n, os.POSIX_FADV_DONTNEED)
        src_off += n
        dst_off += n
        remaining -= n
        if progress:
            progress(n)


def copy_range_hashed(
    src: Path,
    dst_fd: int,
    *,
    src_offset: int,
    dst_offset: int,
    length: int,
    hasher: hashlib._Hash | None,
    progress: Progress | None = None,
) -> None:
    """Copies ``length`` bytes of ``src`` into ``dst_fd`` in the kernel; ``hasher`` reads them on another thread."""
    if hasher is None or not length:
        with open(src, "rb", buffering=0) as fsrc:
            _kernel_copy(fsrc.fileno(), dst_fd, src_offset, dst_offset, length, progress)
        return
    h = hasher

    def _hash(cancel: threading.Event) -> None:
        hash_file(src, start=src_offset, length=length, h=h, cancel=cancel)

    with beside(_hash), open(src, "rb", buffering=0) as fsrc:
        _kernel_copy(fsrc.fileno(), dst_fd, src_offset, dst_offset, length, progress)


def try_reflink(src: Path, dst: Path) -> bool:
    """Clones ``src`` to ``dst`` with FICLONE; False (and no ``dst``) when the filesystem cannot."""
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        try:
            fcntl.ioctl(fd.fileno(), _FICLONE, fs.fileno())
            return True
        except OSError:
            pass
    dst.unlink()
    return False


def place_file(
    src: Path,
    dst: Path,
    *,
    mode: str,
    name: str,
    want_hash: bool,
    known_sha256: str | None = None,
    progress: Progress | None = None,
    fsync: bool = False,
) -> FileRecord:
    """Puts ``src`` at ``dst`` by ``mode`` (see :data:`LINK_MODES`) and returns its record.

    ``fsync`` flushes a copied file as soon as it is written, so its writeback overlaps the work
    on the next file instead of piling up before the final rename.

    With ``copy`` (and ``auto`` falling back to it) the hash comes free with the copy. Linked files
    are hashed only when ``want_hash`` (a full read), unless ``known_sha256`` is given (a Hub blob).
    """
    if mode not in LINK_MODES:
        raise InputError(f"unknown --link mode {mode!r}; choose one of {', '.join(LINK_MODES)}.")
    interrupt.check()  # a file dequeued just as Ctrl-C arrived is not started
    size = src.stat().st_size
    how = mode
    if mode in ("auto", "reflink"):
        if try_reflink(src, dst):
            how = "reflink"
        elif mode == "reflink":
            raise InputError(f"{dst.parent}: this filesystem cannot reflink {src}; use --link copy or hardlink.")
        else:
            how = "copy"
    elif mode == "hardlink":
        try:
            os.link(src.resolve(), dst)
        except OSError as exc:
            raise InputError(f"cannot hard-link {src} into {dst.parent} ({exc.strerror}); use --link copy.") from exc
    elif mode == "symlink":
        os.symlink(src.resolve(), dst)
    if how == "copy":
        h = hashlib.sha256()
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            copy_range_hashed(src, fd, src_offset=0, dst_offset=0, length=size, hasher=h, progress=progress)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return FileRecord(name=name, size=size, sha256=h.hexdigest(), how=how)
    if progress:
        progress(size)
    digest = known_sha256 or (hash_file(src) if want_hash else None)
    return FileRecord(name=name, size=size, sha256=digest, how=how)


def run_parallel(jobs: Sequence[Callable[[], T]], *, workers: int = 2) -> list[T]:
    """Runs independent file jobs on ``workers`` threads, results in job order; the first error is re-raised.

    Kernel copies, sha256 and fsync release the GIL, so placing several shards at once keeps both
    cores busy (one file's copy overlapping another's hash) instead of leaving the copier idle
    while the hasher catches up.

    On the first error or an interrupt no queued job starts (they are cancelled, not merely left to run
    while the pool winds down); on an interrupt the running ones leave at their next chunk too.
    """
    if len(jobs) <= 1 or workers <= 1:
        results = []
        for job in jobs:
            interrupt.check()
            results.append(job())
        return results
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vhtool-place")
    try:
        futures = [pool.submit(job) for job in jobs]
        # Woken by the first failure, not by the jobs in order: a failed shard stops the queue at once. The
        # timeout lets this (main) thread run a signal handler promptly even when the kernel delivered the
        # signal to a copying thread, which cannot run Python handlers.
        while True:
            done, not_done = wait(futures, timeout=0.1, return_when=FIRST_EXCEPTION)
            if not not_done or any(f.exception() is not None for f in done):
                break
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        results = [f.result() for f in futures]
    except BaseException as exc:
        with interrupt.stopping(exc):
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def hub_blob_sha256(path: Path) -> str | None:
    """The sha256 of a file in the Hugging Face cache, read from its blob name (no data read), if it is one."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and len(target.name) == 64:
        try:
            int(target.name, 16)
        except ValueError:
            return None
        return target.name
    return None
