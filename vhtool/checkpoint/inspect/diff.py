"""``diff_checkpoints``: tensors only in one checkpoint, with another shape/dtype, or (``hash``) other bytes."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vhtool.checkpoint.inspect.group import natural_key
from vhtool.checkpoint.inspect.load import load
from vhtool.checkpoint.inspect.model import DiffResult, ProgressFactory, Tensor
from vhtool.errors import CheckpointError, InputError, OperationError

_HASH_CHUNK = 1 << 20


def diff_checkpoints(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    revision: str | None = None,
    filter_glob: str | None = None,
    hash: bool = False,
    token: str | bool | None = None,
    progress_factory: ProgressFactory | None = None,
) -> DiffResult:
    """Compares two checkpoints by their headers; with ``hash``, also the bytes of tensors present in both.

    Tensors of the model are matched by name; sidecar and adapter tensors by ``<file>:<name>``.
    Hashing reads each local file once, tensor by tensor in offset order, in 1 MiB chunks.

    Args:
        a: first checkpoint (local path, ``builtin:`` or Hub id).
        b: second checkpoint.
        revision: Hub revision of ``a`` (``b`` is read at its default branch).
        filter_glob: compare only tensors whose name matches this ``fnmatch`` pattern.
        hash: also compare tensor bytes (sha256); needs local checkpoints.
        token: Hub token.
        progress_factory: called with the bytes to hash; returns a callback taking byte counts.

    Raises:
        InputError: as :func:`inspect_checkpoint`, or ``hash`` on a Hub repo.
    """
    la = load(str(a), revision=revision, token=token)
    lb = load(str(b), revision=None, token=token)
    if hash:
        for loaded in (la, lb):
            if any(t.abs_path is None for t in loaded.tensors):
                raise InputError(
                    f"{loaded.source.location}: --hash reads tensor data and needs a local checkpoint; download the "
                    f"repo (`hf download {loaded.source.location}`) and pass the directory."
                )

    def keep(ts: list[Tensor]) -> dict[str, Tensor]:
        return {t.key: t for t in ts if filter_glob is None or fnmatch.fnmatchcase(t.name, filter_glob)}

    ta, tb = keep(la.tensors), keep(lb.tensors)

    def brief(t: Tensor) -> dict[str, Any]:
        return {"name": t.key, "shape": list(t.info.shape), "dtype": t.info.dtype, "file": t.file}

    only_a = tuple(brief(ta[k]) for k in sorted(set(ta) - set(tb), key=natural_key))
    only_b = tuple(brief(tb[k]) for k in sorted(set(tb) - set(ta), key=natural_key))
    common = sorted(set(ta) & set(tb), key=natural_key)
    changed: list[dict[str, Any]] = []
    same_layout: list[str] = []
    for k in common:
        x, y = ta[k], tb[k]
        if x.info.shape != y.info.shape or x.info.dtype != y.info.dtype:
            changed.append(
                {
                    "name": k,
                    "a": {"shape": list(x.info.shape), "dtype": x.info.dtype},
                    "b": {"shape": list(y.info.shape), "dtype": y.info.dtype},
                }
            )
        else:
            same_layout.append(k)
    differ: list[str] = []
    hashed_bytes = 0
    if hash and same_layout:
        total = 2 * sum(ta[k].info.nbytes for k in same_layout)
        advance = progress_factory(total) if progress_factory else None
        ha = _hash_ranges([ta[k] for k in same_layout], advance)
        hb = _hash_ranges([tb[k] for k in same_layout], advance)
        differ = [k for k in same_layout if ha[k] != hb[k]]
        hashed_bytes = total
    return DiffResult(
        a=la.source,
        b=lb.source,
        filter=filter_glob,
        compared=len(common),
        only_in_a=only_a,
        only_in_b=only_b,
        changed=tuple(changed),
        hashed=hash,
        bytes_differ=tuple(differ),
        hashed_bytes=hashed_bytes,
    )


def _hash_range(fh: Any, t: Tensor, view: memoryview, advance: Callable[[int], None] | None) -> str:
    import hashlib  # only --diff --hash needs it; keeps OpenSSL out of the header-only start-up

    from vhtool.checkpoint.copyio import hash_range

    h = hashlib.sha256()
    try:
        hash_range(fh, h, start=t.abs_offset, length=t.info.nbytes, view=view[:_HASH_CHUNK], progress=advance)
    except OperationError as exc:
        raise CheckpointError(f"{t.abs_path}: ends inside tensor {t.name!r} (truncated file).") from exc
    return h.hexdigest()


def _hash_ranges(tensors: list[Tensor], advance: Callable[[int], None] | None) -> dict[str, str]:
    """sha256 of each tensor's byte range; one file open at a time, ranges read in offset order, 1 MiB buffer."""
    by_file: dict[Path, list[Tensor]] = {}
    for t in tensors:
        assert t.abs_path is not None
        by_file.setdefault(t.abs_path, []).append(t)
    out: dict[str, str] = {}
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    for path, members in by_file.items():
        try:
            with open(path, "rb", buffering=0) as fh:
                for t in sorted(members, key=lambda m: m.abs_offset):
                    out[t.key] = _hash_range(fh, t, view, advance)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return out
