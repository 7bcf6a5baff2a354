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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vhtool.errors import InputError, OperationError, OutputExistsError

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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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


def check_output_target(out: Path, *, force: bool) -> None:
    """Fails early (before any work) when ``out`` exists without ``force`` or its parent is unusable."""
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to replace it.")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: the output's parent directory does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: not writable; choose another output with -o.")


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
def atomic_output_dir(out: str | os.PathLike[str], *, force: bool = False, durable: bool = True) -> Iterator[Path]:
    """Yields an empty temporary directory that becomes ``out`` when the block finishes without error.

    Args:
        out: the final output directory.
        force: replace an existing ``out`` (only after the new one is complete).
        durable: fsync the new tree before it is moved into place, so a power loss cannot leave
            a renamed directory with empty files.

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is false.
        OperationError: another run holds the output, or the filesystem failed (disk full, quota).
    """
    out = Path(out).absolute()
    check_output_target(out, force=force)
    lock_path = lock_sibling(out)
    lock_fd = _acquire_lock(lock_path)
    tmp = tmp_sibling(out)
    try:
        if tmp.exists() or tmp.is_symlink():  # a crashed earlier run's leftovers: we hold the lock, so it is stale
            _remove(tmp)
        # Re-check now that we hold the lock: a concurrent run may have finished OUT meanwhile.
        if (out.exists() or out.is_symlink()) and not force:
            raise OutputExistsError(f"{out} already exists; pass --force to replace it.")
        os.mkdir(tmp)
        try:
            yield tmp
            if durable:
                fsync_tree(tmp)
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
                dfd = os.open(out.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except BaseException:
            _remove(tmp)
            raise
    except OSError as exc:
        raise OperationError(f"writing {out} failed: {exc.strerror or exc}; nothing was written.") from exc
    finally:
        try:
            os.unlink(lock_path)
        except OSError:
            pass
        os.close(lock_fd)


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.exists():
        shutil.rmtree(p, ignore_errors=True)
