"""Getting Hub files onto this machine: snapshots, single files, cache-only lookups, a reachability probe.

Every call runs inside :func:`vhtool.hub.errors.hub_errors`. ``hf_hub_download`` retries a file it
cannot reach for about 25 s when it is not cached; vhtool avoids that storm by asking
:func:`reachable` once (one request, no retries) before downloading single files, and reading from
the cache instead when the Hub cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.hub.errors import hub_errors, transport_errors


@dataclass(frozen=True)
class Snapshot:
    """A Hub repo (or the part of it asked for) in the local Hugging Face cache."""

    path: Path
    commit: str | None


def _snapshot(local: str | Path) -> Snapshot:
    path = Path(local)
    return Snapshot(path=path, commit=path.name if path.parent.name == "snapshots" else None)


def _given(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (huggingface_hub's reading of it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def model_info_once(repo_id: str, *, revision: str | None = None, token: str | bool | None = None) -> Any | None:
    """``HfApi.model_info`` in one request, without retries; None offline or when the endpoint cannot be reached.

    Raises:
        HubUnavailableError: no such repo.
        InputError: a gated repo or a missing revision.
    """
    if offline_mode():
        return None
    from huggingface_hub import HfApi

    with hub_errors(repo_id, action="look up", revision=revision):
        try:
            return HfApi(token=token).model_info(repo_id, revision=revision, token=token)
        except transport_errors():
            return None


def reachable(repo_id: str, *, revision: str | None = None, token: str | bool | None = None) -> bool:
    """Whether the Hub answers for ``repo_id`` now (see :func:`model_info_once`, which raises the same errors)."""
    return model_info_once(repo_id, revision=revision, token=token) is not None


def snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    patterns: list[str],
    token: str | bool | None = None,
    cache_dir: str | None = None,
    what: str = "the model",
) -> Snapshot:
    """Downloads the files of ``repo_id`` that ``patterns`` name (exact names, from the catalogue) into the cache.

    Offline or unreachable, a snapshot already in the cache is used when it holds them.

    Raises:
        HubUnavailableError: offline or unreachable and not cached, or no such repo.
        InputError: a gated repo or a missing revision.
    """
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, action="download", revision=revision, what=what):
        local = snapshot_download(
            repo_id,
            **_given(revision=revision, token=token, cache_dir=cache_dir),
            allow_patterns=patterns,
        )
    return _snapshot(local)


def cached_snapshot(repo_id: str, *, revision: str | None = None, cache_dir: str | None = None) -> Snapshot:
    """The repo's snapshot already in the local cache; never contacts the Hub.

    Raises:
        HubUnavailableError: not in the cache.
    """
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, action="read from the cache", revision=revision):
        local = snapshot_download(repo_id, local_files_only=True, **_given(revision=revision, cache_dir=cache_dir))
    return _snapshot(local)


def download_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | None = None,
) -> Path | None:
    """Downloads one file of a Hub repo; None when the repo does not have it.

    Call :func:`reachable` first: a file that cannot be reached and is not cached makes
    ``huggingface_hub`` retry for about 25 s.

    Raises:
        HubUnavailableError: offline or unreachable and not cached, or no such repo.
        InputError: a gated repo or a missing revision.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    with hub_errors(repo_id, action="download", revision=revision):
        try:
            return Path(
                hf_hub_download(repo_id, filename, **_given(revision=revision, token=token, cache_dir=cache_dir))
            )
        except RemoteEntryNotFoundError:
            return None


__all__ = [
    "Snapshot",
    "cached_snapshot",
    "download_file",
    "offline_mode",
    "reachable",
    "snapshot",
]
