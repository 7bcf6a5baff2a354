"""What a push target holds before pushing: its head commit and files (size, git blob id, LFS sha256)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.errors import VhtoolError
from vhtool.hub.errors import hub_errors, quiet_hub, transport_errors


@dataclass(frozen=True)
class RemoteFile:
    """One file of the remote revision, as the Hub lists it."""

    path: str
    size: int | None
    blob_id: str | None
    lfs_sha256: str | None


@dataclass(frozen=True)
class RemoteState:
    """What was learnt about the target repo before pushing."""

    checked: bool
    exists: bool
    branch_exists: bool
    head: str | None
    note: str

    def to_json(self) -> dict[str, Any]:
        """The ``remote`` object of ``push --json``."""
        return {
            "checked": self.checked,
            "exists": self.exists,
            "branch_exists": self.branch_exists,
            "head": self.head,
            "note": self.note,
        }


def _remote_file(sibling: Any) -> RemoteFile:
    lfs = getattr(sibling, "lfs", None)
    return RemoteFile(
        path=sibling.rfilename,
        size=sibling.size,
        blob_id=sibling.blob_id,
        lfs_sha256=lfs.sha256 if lfs is not None else None,
    )


def read_remote_state(
    repo_id: str, revision: str, *, token: str | bool | None, strict: bool
) -> tuple[RemoteState, dict[str, RemoteFile]]:
    """The remote head and files of ``revision`` (or of the default branch when the branch does not exist yet).

    Args:
        repo_id: the target repo.
        revision: the branch to push to.
        token: the Hub token (False: anonymous).
        strict: a real push: a Hub that cannot be read is an error. Otherwise (``--dry-run``) the remote
            is reported as not checked.

    Raises:
        OperationError: ``strict`` and the Hub cannot be read (offline, unreachable, rejected token).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(token=token)

    def info(rev: str | None) -> Any:
        return api.model_info(repo_id, revision=rev, files_metadata=True, token=token)

    not_checked: tuple[type[Exception], ...] = (OfflineModeIsEnabled, HfHubHTTPError, *transport_errors())
    guard = hub_errors(repo_id, action=f"read {repo_id}", pushed_note="nothing was pushed") if strict else quiet_hub()
    try:
        with guard:
            try:
                try:
                    model = info(revision)
                    branch_exists = True
                except RevisionNotFoundError:
                    model = info(None)
                    branch_exists = False
            except RepositoryNotFoundError:
                return RemoteState(True, False, False, None, f"{repo_id} does not exist yet; it will be created"), {}
    except not_checked as exc:
        if isinstance(exc, OfflineModeIsEnabled):
            why = "HF_HUB_OFFLINE is set"
        elif isinstance(exc, HfHubHTTPError):
            why = f"the Hub answered {exc.response.status_code if exc.response is not None else '?'}"
        else:
            why = f"unreachable: {type(exc).__name__}"
        return RemoteState(False, False, False, None, f"remote not checked ({why})"), {}
    files = {s.rfilename: _remote_file(s) for s in (model.siblings or [])}
    note = (
        "compared with the remote"
        if branch_exists
        else f"branch {revision!r} does not exist yet; compared with the default branch"
    )
    return RemoteState(True, True, branch_exists, model.sha, note), files


def read_remote_text(repo_id: str, filename: str, *, revision: str | None, token: str | bool | None) -> str | None:
    """A small text file of the repo (e.g. its model card); None when it cannot be read, for whatever reason."""
    from huggingface_hub import hf_hub_download

    try:
        with tempfile.TemporaryDirectory(prefix="vhtool-remote-") as tmp:
            with hub_errors(repo_id, action=f"download {filename} of"):
                path = hf_hub_download(repo_id, filename, revision=revision, local_dir=tmp, token=token)
            return Path(path).read_text(encoding="utf-8", errors="replace")
    except (VhtoolError, OSError):
        return None


__all__ = ["RemoteFile", "RemoteState", "read_remote_state", "read_remote_text"]
