"""The one atomic writer: output directories and single files that appear complete or not at all.

Every output is built in a temporary sibling ``.<name>.vhtool-tmp`` and moved into place at the end,
under a sibling lock ``.<name>.vhtool-lock`` (``flock``, released by the kernel even on SIGKILL). The
guarantees, for directories (:func:`atomic_output_dir`, :func:`locked_update`) and files
(:class:`AtomicFile`, :func:`write_file_atomic`):

* **Complete or absent.** The new tree (or file) is fsynced before it is renamed into place, and the
  parent directory after. A file replaces the old one with ``rename(2)``, atomic everywhere. A directory
  that replaces an existing one is swapped with ``renameat2(RENAME_EXCHANGE)`` (Linux): one atomic step.
* **The fallback never loses OUT.** Where the exchange is unavailable (macOS, some filesystems), OUT is
  renamed aside to ``.<name>.vhtool-old``, the new one renamed in, and the aside copy removed; when the
  second rename fails the aside copy is renamed back before the error is raised, and the message says
  that OUT is unchanged. Should even that fail (or the process die between the two renames), the next
  run on OUT finds OUT missing beside an aside copy and *restores* it before doing anything else; an
  aside copy beside a present OUT is a completed replace's leftover and is removed.
* **Permissions from the umask.** The temporary directory is created with mode ``0o777`` and files with
  ``0o666``, both reduced by the process umask (and any default ACL) by the kernel itself, exactly as
  ``mkdir``/``open`` would: never ``mkdtemp``'s private ``0o700``. Files a library wrote privately
  (safetensors writes ``0o600``) are given the same mode before the move (:func:`settle_modes`).
* **Clean-up on every failure and on SIGINT/SIGTERM.** The temporary sibling is removed when the block
  raises, Ctrl-C included; SIGTERM raises too while a writer runs (see :mod:`vhtool.checkpoint.interrupt`).
  A temporary sibling left by a SIGKILLed run is stale once its lock is free, and the next run removes it.
* **One writer at a time.** A second command on the same OUT fails clearly; a second ``save_pretrained``
  (two processes that both think they are the main one) waits for the first (:func:`locked_update`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shlex
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from vhtool.checkpoint import interrupt
from vhtool.checkpoint.target import check_output_target
from vhtool.errors import InputError, OperationError

TMP_SUFFIX = ".vhtool-tmp"
LOCK_SUFFIX = ".vhtool-lock"
ASIDE_SUFFIX = ".vhtool-old"
_RENAME_EXCHANGE = 2


def tmp_sibling(out: Path) -> Path:
    """Where the new ``out`` is built: ``.<name>.vhtool-tmp`` beside it."""
    return out.parent / f".{out.name}{TMP_SUFFIX}"


def lock_sibling(out: Path) -> Path:
    """The lock file of ``out``: ``.<name>.vhtool-lock`` beside it."""
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def aside_sibling(out: Path) -> Path:
    """Where the fallback replace puts the previous ``out`` for a moment: ``.<name>.vhtool-old`` beside it."""
    return out.parent / f".{out.name}{ASIDE_SUFFIX}"


def _acquire_lock(path: Path, *, wait: bool = False) -> int:
    """Takes an exclusive flock on ``path`` (waiting for it when ``wait``); returns the open descriptor."""
    out = path.parent / path.name[1 : -len(LOCK_SUFFIX)]
    for _ in range(1000 if wait else 10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise unusable_output(out, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OperationError(
                f"another vhtool run is writing {out} right now; wait for it to finish or choose another output."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have unlinked the file after we opened it: make sure we locked the live one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise OperationError(f"{path}: could not take the output lock.")


def _release_lock(lock_path: Path, lock_fd: int) -> None:
    try:
        os.unlink(lock_path)
    except OSError:
        pass
    os.close(lock_fd)


def unusable_output(out: Path, exc: OSError) -> InputError:
    """The exit-2 error for an output path the operating system will not let us create."""
    reason = exc.strerror or type(exc).__name__
    return InputError(f"{out}: cannot be written there ({reason.lower()}); choose another output with -o.")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths with ``renameat2(RENAME_EXCHANGE)``; False when the platform cannot.

    The one place that asks the platform (tests switch the exchange off here to walk the fallback).
    """
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


def recover_aside(out: Path) -> bool:
    """Settles what an interrupted fallback replace left; call with ``out``'s lock held.

    Returns:
        True when the previous ``out`` was missing and has been put back from its aside copy (the only copy
        of the user's output: it is restored, never deleted). An aside copy beside a present ``out`` is the
        leftover of a replace that completed, and is removed.
    """
    old = aside_sibling(out)
    if not (old.exists() or old.is_symlink()):
        return False
    if out.exists() or out.is_symlink():
        _remove(old)
        return False
    os.rename(old, out)
    return True


class ReplaceError(OperationError):
    """Moving a finished output into place failed; the message says in which state OUT was left (exit 1)."""


def replace_dir(tmp: Path, out: Path) -> None:
    """Moves the finished directory ``tmp`` to ``out``, replacing an existing ``out``; ``tmp`` is gone after.

    Raises:
        ReplaceError: the move failed; ``out`` is as it was (the message says so), or, when even putting it
            back failed, kept at its aside path for the next run to restore (the message says where).
    """
    if not (out.exists() or out.is_symlink()):
        try:
            os.rename(tmp, out)
        except OSError as exc:
            raise ReplaceError(f"writing {out} failed: {_reason(exc)}; nothing was written.") from exc
        return
    try:
        swapped = exchange(tmp, out)
    except OSError as exc:
        raise ReplaceError(f"replacing {out} failed: {_reason(exc)}; {out} was left as it was.") from exc
    if swapped:
        _remove(tmp)  # now the previous OUT
        return
    old = aside_sibling(out)
    _remove(old)  # we hold the lock and OUT exists (checked above): a completed replace's leftover
    try:
        os.rename(out, old)
    except OSError as exc:
        raise ReplaceError(f"replacing {out} failed: {_reason(exc)}; {out} was left as it was.") from exc
    try:
        os.rename(tmp, out)
    except BaseException as exc:  # Ctrl-C between the renames too: OUT must not stay missing
        try:
            os.rename(old, out)
        except OSError:
            raise ReplaceError(
                f"replacing {out} failed ({_describe(exc)}) and the previous {out} could not be put back; "
                f"it is kept as {old}: `mv {shlex.quote(str(old))} {shlex.quote(str(out))}` puts it back, and the "
                f"next vhtool run writing {out} restores it."
            ) from exc
        if isinstance(exc, OSError):
            raise ReplaceError(f"replacing {out} failed: {_reason(exc)}; {out} was left as it was.") from exc
        raise
    _remove(old)


def _describe(exc: BaseException) -> str:
    return _reason(exc) if isinstance(exc, OSError) else type(exc).__name__


def new_file_mode(folder: Path) -> int:
    """The permission bits a new file gets in ``folder``: ``0o666`` less the umask (and a default ACL's mask).

    Asked of the kernel with a probe file rather than by setting and resetting the process umask, which
    would race with other threads creating files meanwhile.
    """
    probe = folder / f".vhtool-mode-probe-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        os.unlink(probe)


def settle_modes(tmp: Path) -> None:
    """Gives every file written into ``tmp`` the mode a new file gets there (from the umask).

    Libraries that write through a private temporary file (safetensors 0.8 does) leave ``0o600`` weights,
    which colleagues on a shared cluster cannot read. Linked files (a hard link shares its inode with the
    source; a symlink's target is someone else's) are left alone.
    """
    mode = new_file_mode(tmp)
    for dirpath, _dirnames, filenames in os.walk(tmp):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(os.path.join(dirpath, name), mode)


def make_dir(path: Path) -> None:
    """Creates the directory ``path`` with the permissions the umask gives (``0o777 & ~umask``, default ACLs)."""
    os.mkdir(path, 0o777)


@contextmanager
def locked_sibling(out: Path, *, wait: bool = False) -> Iterator[Path]:
    """Holds ``out``'s lock for the block and yields its (cleared, not yet created) temporary sibling.

    On entry, under the lock: an aside copy of a previous ``out`` is restored (:func:`recover_aside`) and a
    crashed run's temporary sibling removed. On exit, whatever the block left at the temporary path is
    removed, and the lock released. SIGTERM raises inside the block (when nothing else handles it), so the
    clean-up runs.

    Args:
        out: the output (absolute).
        wait: wait for another holder instead of failing (saves from several processes queue up).

    Raises:
        InputError: the lock cannot be created next to ``out`` (exit 2).
        OperationError: another run holds ``out`` (``wait`` false).
    """
    with interrupt.sigterm_raises():
        lock_path = lock_sibling(out)
        lock_fd = _acquire_lock(lock_path, wait=wait)
        tmp = tmp_sibling(out)
        try:
            try:
                recover_aside(out)
                _remove(tmp)  # a crashed earlier run's leftovers: we hold the lock, so they are stale
            except OSError as exc:
                raise unusable_output(out, exc) from None
            try:
                yield tmp
            finally:
                _remove(tmp)
        finally:
            _release_lock(lock_path, lock_fd)


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
        OperationError: another run holds the output, or the filesystem failed mid-write (disk full, quota);
            the message says whether ``out`` was left as it was.
    """
    out = check_output_target(out, force=force, inputs=inputs)
    with locked_sibling(out) as tmp:
        try:
            # Re-check now that we hold the lock: a concurrent run may have finished OUT meanwhile, or an
            # interrupted replace's aside copy may just have been put back.
            check_output_target(out, force=force, inputs=inputs)
            make_dir(tmp)
        except OSError as exc:
            raise unusable_output(out, exc) from None
        try:
            yield tmp
            settle_modes(tmp)
            if durable:
                fsync_tree(tmp)
            # The last look before replacing: OUT must still be something --force may replace.
            check_output_target(out, force=force, inputs=inputs)
        except OSError as exc:
            raise OperationError(f"writing {out} failed: {_reason(exc)}; nothing was written.") from exc
        replace_dir(tmp, out)
        if durable:
            try:
                _fsync_dir(out.parent)
            except OSError as exc:
                raise OperationError(
                    f"{out} was written, but flushing its folder to disk failed: {_reason(exc)}."
                ) from exc


@contextmanager
def locked_update(out: Path) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``out`` (mode from the umask) while holding ``out``'s lock.

    For writers that merge into an existing folder file by file (``save_pretrained`` into a training folder
    that holds other files): they build their files in the temporary directory and move them in before the
    block ends. The lock is *waited for*, so two processes saving at once take turns; the temporary
    directory is removed on exit, whatever happened.
    """
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked_sibling(out, wait=True) as tmp:
        make_dir(tmp)
        yield tmp


def merge_into(tmp: Path, out: Path, *, superseded: Callable[[str], bool], durable: bool = True) -> None:
    """Moves every file of ``tmp`` into ``out``; call inside :func:`locked_update` (``out``'s lock held).

    A missing ``out`` is ``tmp`` renamed (one step). Otherwise each file is renamed over its old
    counterpart (a new inode: a hard-linked older file is never written through), then the top-level files
    of ``out`` that ``superseded(name)`` says the new files make stale, and that were not written now, are
    removed; every other file in ``out`` (a training run's logs, optimizer state, user files) stays.

    Args:
        tmp: the finished temporary directory (from :func:`locked_update`).
        out: the folder to update.
        superseded: which older top-level file names the new files replace (a catalogue question).
        durable: fsync the new files before they are moved, and the folders after.
    """
    settle_modes(tmp)
    if durable:
        fsync_tree(tmp)
    touched = {out, out.parent}
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
    else:
        written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file() or p.is_symlink())
        for rel in written:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(tmp / rel, target)
            touched.add(target.parent)
        new_top = {str(r) for r in written if len(r.parts) == 1}
        for entry in sorted(out.iterdir()):
            if entry.name not in new_top and superseded(entry.name) and (entry.is_file() or entry.is_symlink()):
                entry.unlink()
    if durable:
        for folder in sorted(touched):
            _fsync_dir(folder)


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
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class AtomicFile:
    """A text file built in a temporary sibling and renamed to ``out`` by :meth:`commit`, never half-written.

    The same sibling lock as :func:`atomic_output_dir` makes a concurrent run on the same ``out`` fail
    clearly. Check ``out`` with :func:`check_output_target` (``kind="file"``) before doing the work. The
    file gets ``0o666`` reduced by the umask; a stale temporary file of a killed run is removed.

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
            OperationError: the write or rename failed (``out`` is as it was, nothing is left behind), or the
                file is in place but its folder could not be flushed (the message says which).
        """
        assert self.sink is not None and self.tmp is not None
        try:
            try:
                self.sink.flush()
                if self.durable:
                    os.fsync(self.sink.fileno())
                self.sink.close()
                self.sink = None
                os.replace(self.tmp, self.out)  # rename(2) replaces a file atomically on every POSIX system
                self.tmp = None
            except OSError as exc:
                self.discard()
                raise OperationError(f"writing {self.out} failed: {_reason(exc)}; nothing was written.") from None
            except BaseException:
                self.discard()
                raise
            if self.durable:
                try:
                    _fsync_dir(self.out.parent)
                except OSError as exc:
                    raise OperationError(
                        f"{self.out} was written, but flushing its folder to disk failed: {_reason(exc)}."
                    ) from None
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


def write_file_atomic(path: Path, text: str, *, durable: bool = True) -> None:
    """Writes ``text`` to ``path`` through :class:`AtomicFile`: the old content or the new, never half of one.

    Raises:
        InputError: the temporary file or lock cannot be created next to ``path`` (exit 2).
        OperationError: another run is writing ``path``, or the write failed (``path`` unchanged).
    """
    with interrupt.sigterm_raises():
        sink = AtomicFile(path, durable=durable)
        try:
            assert sink.sink is not None
            sink.sink.write(text)
        except BaseException:
            sink.discard()
            raise
        sink.commit()


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.exists():
        shutil.rmtree(p, ignore_errors=True)
