"""Reading a Hub repo's safetensors headers by HTTP range requests, never its tensor data.

What comes back is plain data (:class:`RemoteTensor`, :class:`RemoteHeader`, :class:`RemoteWeights`)
for the file world to validate and describe; Hub exceptions never leave this module untranslated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.hub.download import model_info_once
from vhtool.hub.errors import hub_errors, no_progress_bars


@dataclass(frozen=True)
class RemoteTensor:
    """One entry of a remote safetensors header, as the Hub's parser returns it (not validated)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, ...]


@dataclass(frozen=True)
class RemoteHeader:
    """The header of one remote ``.safetensors`` file."""

    filename: str
    tensors: dict[str, RemoteTensor]
    metadata: dict[str, str]


@dataclass(frozen=True)
class RemoteWeights:
    """The headers of a repo's model weights (``model.safetensors`` or the shards its index names)."""

    sharded: bool
    weight_map: dict[str, str]
    metadata: dict[str, Any] | None
    files: dict[str, RemoteHeader]


@dataclass(frozen=True)
class RemoteRepo:
    """A Hub repo at one commit: its file list, and reads of its small files and headers."""

    repo_id: str
    revision: str | None
    commit: str | None
    files: frozenset[str]
    token: str | bool | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """``repo`` or ``repo@revision``, for messages."""
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    @property
    def _rev(self) -> str | None:
        return self.commit or self.revision

    def download(self, filename: str) -> Path:
        """Downloads one (small) file of the repo at this commit into the cache.

        Raises:
            VhtoolError: the Hub failure, translated.
        """
        from huggingface_hub import hf_hub_download

        with no_progress_bars(), hub_errors(self.repo_id, action="download", revision=self.revision):
            return Path(hf_hub_download(self.repo_id, filename, revision=self._rev, token=self.token))

    def file_header(self, filename: str) -> RemoteHeader:
        """The header of one ``.safetensors`` file of the repo (one or two range requests).

        Raises:
            CheckpointError: a header the Hub's parser rejects.
            VhtoolError: the Hub failure, translated.
        """
        from huggingface_hub import HfApi

        with no_progress_bars(), hub_errors(self.repo_id, action="read the headers of", revision=self.revision):
            meta = HfApi(token=self.token).parse_safetensors_file_metadata(
                self.repo_id, filename, revision=self._rev, token=self.token
            )
        return _header(filename, meta)

    def weights(self) -> RemoteWeights:
        """The headers of the model weights: ``model.safetensors``, or every shard the index names.

        Raises:
            InputError: the repo has no safetensors weights.
            CheckpointError: a header the Hub's parser rejects.
            VhtoolError: the Hub failure, translated.
        """
        from huggingface_hub import HfApi

        with no_progress_bars(), hub_errors(self.repo_id, action="read the headers of", revision=self.revision):
            meta = HfApi(token=self.token).get_safetensors_metadata(self.repo_id, revision=self._rev, token=self.token)
        return RemoteWeights(
            sharded=bool(meta.sharded),
            weight_map=dict(meta.weight_map),
            metadata=dict(meta.metadata) if meta.metadata is not None else None,
            files={name: _header(name, fm) for name, fm in sorted(meta.files_metadata.items())},
        )


def _header(filename: str, meta: Any) -> RemoteHeader:
    tensors = {
        name: RemoteTensor(name=name, dtype=str(t.dtype), shape=tuple(t.shape), data_offsets=tuple(t.data_offsets))
        for name, t in meta.tensors.items()
    }
    return RemoteHeader(filename=filename, tensors=tensors, metadata=dict(meta.metadata or {}))


def open_remote_repo(
    repo_id: str, *, revision: str | None = None, token: str | bool | None = None
) -> RemoteRepo | None:
    """Looks ``repo_id`` up on the Hub (one request, no retries); None when offline or unreachable.

    Raises:
        HubUnavailableError: no such repo.
        InputError: a gated repo or a missing revision.
    """
    info = model_info_once(repo_id, revision=revision, token=token)
    if info is None:
        return None
    files = frozenset(s.rfilename for s in (info.siblings or []))
    return RemoteRepo(repo_id=repo_id, revision=revision, commit=info.sha, files=files, token=token)


__all__ = ["RemoteHeader", "RemoteRepo", "RemoteTensor", "RemoteWeights", "open_remote_repo"]
