"""Comparing local files with the remote revision: the git blob ids and LFS sha256 the Hub lists."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vhtool.hub.remote_state import RemoteFile


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (sha1 of ``"blob <size>\\0" + content``), in constant memory."""
    size = path.stat().st_size
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 * 1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1_bytes(data: bytes) -> str:
    """The git blob id of ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_status(
    *, size: int, sha256: str, local: Path | None, content: bytes | None, remote: RemoteFile | None
) -> str:
    """``added``, ``changed`` or ``unchanged``: a local file (by path or content) against the remote one.

    Size first, then the LFS sha256 for LFS files, else the git blob id (computed only when needed).
    """
    if remote is None:
        return "added"
    if remote.size is not None and remote.size != size:
        return "changed"
    if remote.lfs_sha256 is not None:
        return "unchanged" if remote.lfs_sha256 == sha256 else "changed"
    if remote.blob_id is None:
        return "changed"
    if content is not None:
        blob = git_blob_sha1_bytes(content)
    else:
        assert local is not None
        blob = git_blob_sha1(local)
    return "unchanged" if blob == remote.blob_id else "changed"


__all__ = ["file_status", "git_blob_sha1", "git_blob_sha1_bytes"]
