"""Output directories that appear complete or not at all.

Every writing command builds its output in a temporary sibling ``.<name>.vhtool-tmp`` and moves it
into place at the end (an atomic exchange when replacing with ``--force``). A sibling lock file
``.<name>.vhtool-lock`` (``flock``, released by the kernel even on SIGKILL) makes concurrent runs on
the same OUT fail clearly; a leftover temporary sibling whose lock is free is a crashed run's, and
is removed by the next run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from vhtool.checkpoint.target import check_output_target
from vhtool.errors import InputError, OperationError

TMP_SUFFIX = ".vhtool-tmp"
LOCK_SUFFIX = ".vhtool-lock"
_RENAME_EXCHANGE = 2


def tmp_sibling(out: Path) -> Path:
    return out.parent / f".{out.name}{TMP_SUFFIX}"


def lock_sibling(out: Path) -> Path:
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _acquire_lock(path: Path) -> int:
    """Takes an exclusive, non-blocking flock on ``path``; returns the open descriptor."""
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise unusable_output(path.parent / path.name[1 : -len(LOCK_SUFFIX)], exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OperationError(
                f"another vhtool run is writing {path.parent / path.name[1 : -len(LOCK_SUFFIX)]} right now; "
                "wait for it to finish or choose another output."
            ) from None
        # The holder before us may have unlinked the file after we opened it: make sure we locked the live one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise OperationError(f"{path}: could not take the output lock.")


def unusable_output(out: Path, exc: OSError) -> InputError:
    """The exit-2 error for an output path the operating system will not let us create."""
    reason = exc.strerror or type(exc).__name__
    return InputError(f"{out}: cannot be written there ({reason.lower()}); choose another output with -o.")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths with renameat2(RENAME_EXCHANGE); False when the platform cannot."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def fsync_tree(root: Path) -> None:
    """Flushes every regular file and directory under ``root`` to stable storage."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        dfd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextmanager
def atomic_output_dir(
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    durable: bool = True,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Yields an empty temporary directory that becomes ``out`` when the block finishes without error.

    Args:
        out: the final output directory.
        force: replace an existing ``out`` (only a previous vhtool output, and only after the new one is
            complete); see :mod:`vhtool.checkpoint.target` for what may be replaced.
        durable: fsync the new tree before it is moved into place, so a power loss cannot leave
            a renamed directory with empty files.
        inputs: every path the command reads; ``out`` may not be, contain or lie inside one.

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is false.
        InputError: ``out`` may not be replaced, or cannot be created there (exit 2).
        OperationError: another run holds the output, or the filesystem failed mid-write (disk full, quota).
    """
    out = check_output_target(out, force=force, inputs=inputs)
    lock_path = lock_sibling(out)
    lock_fd = _acquire_lock(lock_path)
    tmp = tmp_sibling(out)
    try:
        try:
            if tmp.exists() or tmp.is_symlink():  # a crashed earlier run's leftovers: we hold the lock: stale
                _remove(tmp)
            # Re-check now that we hold the lock: a concurrent run may have finished OUT meanwhile.
            check_output_target(out, force=force, inputs=inputs)
            os.mkdir(tmp)
        except OSError as exc:
            raise unusable_output(out, exc) from None
        try:
            yield tmp
            if durable:
                fsync_tree(tmp)
            # The last look before replacing: OUT must still be something --force may replace.
            check_output_target(out, force=force, inputs=inputs)
            if out.exists() or out.is_symlink():
                if not _exchange(tmp, out):
                    old = out.parent / f".{out.name}.vhtool-old"
                    _remove(old)
                    os.rename(out, old)
                    os.rename(tmp, out)
                    tmp = old
                _remove(tmp)
            else:
                os.rename(tmp, out)
            if durable:
                _fsync_dir(out.parent)
        except BaseException:
            _remove(tmp)
            raise
    except OSError as exc:
        raise OperationError(f"writing {out} failed: {exc.strerror or exc}; nothing was written.") from exc
    finally:
        _release_lock(lock_path, lock_fd)


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _release_lock(lock_path: Path, lock_fd: int) -> None:
    try:
        os.unlink(lock_path)
    except OSError:
        pass
    os.close(lock_fd)


class AtomicFile:
    """A text file built in a temporary sibling and renamed to ``out`` by :meth:`commit`, never half-written.

    The same sibling lock as :func:`atomic_output_dir` makes a concurrent run on the same ``out`` fail
    clearly. Check ``out`` with :func:`check_output_target` (``kind="file"``) before doing the work.

    Raises:
        InputError: the temporary file or lock cannot be created next to ``out`` (exit 2).
        OperationError: another run holds ``out``.
    """

    def __init__(self, out: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.out = Path(os.path.abspath(os.fspath(out) or "."))
        self.durable = durable
        self._lock_path = lock_sibling(self.out)
        self._lock_fd: int | None = _acquire_lock(self._lock_path)
        self.tmp: Path | None = tmp_sibling(self.out)
        try:
            if self.tmp.exists() or self.tmp.is_symlink():
                _remove(self.tmp)
            self.sink: TextIO | None = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed by commit/discard
        except OSError as exc:
            self._unlock()
            raise unusable_output(self.out, exc) from None

    def commit(self) -> None:
        """Flushes, syncs and renames the temporary file to ``out``.

        Raises:
            OperationError: the write or rename failed (nothing is left behind).
        """
        assert self.sink is not None and self.tmp is not None
        try:
            self.sink.flush()
            if self.durable:
                os.fsync(self.sink.fileno())
            self.sink.close()
            self.sink = None
            os.replace(self.tmp, self.out)
            self.tmp = None
            if self.durable:
                _fsync_dir(self.out.parent)
        except OSError as exc:
            self.discard()
            raise OperationError(f"writing {self.out} failed: {exc.strerror or exc}; nothing was written.") from None
        finally:
            self._unlock()

    def discard(self) -> None:
        """Closes and removes the temporary file (a no-op after :meth:`commit`)."""
        if self.sink is not None:
            try:
                self.sink.close()
            except OSError:
                pass
            self.sink = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
        self.tmp = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            _release_lock(self._lock_path, self._lock_fd)
            self._lock_fd = None


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.exists():
        shutil.rmtree(p, ignore_errors=True)
