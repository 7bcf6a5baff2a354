"""Resolving model sources (local directory, Hub id, ``builtin:*``) to local directories. No torch.

This is the one resolver every reading command uses for its inputs: a path that exists is used as
is and never sent to the Hub; a built-in is the package's directory; a Hub id is a snapshot in the
normal Hugging Face cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.hub.download import PICKLE_PATTERNS, SNAPSHOT_PATTERNS, snapshot
from vhtool.hub.names import Kind, locate, model_name


@dataclass(frozen=True)
class Source:
    """A resolved model source: a local directory plus what to record about where it came from."""

    path: Path
    kind: Kind
    model: str
    revision: str | None = None
    commit: str | None = None

    def record(self) -> dict[str, Any]:
        """What ``vhtool.json`` records as the source."""
        doc: dict[str, Any] = {"model": self.model, "kind": self.kind}
        if self.kind == "local":
            doc["path"] = str(self.path.resolve())
        if self.revision:
            doc["revision"] = self.revision
        if self.commit:
            doc["commit"] = self.commit
        return doc

    @property
    def name_path(self) -> Path:
        """What default output names are derived from: the directory itself when local, else ``./<model-name>``.

        A built-in or a Hub snapshot lives inside the package or the Hugging Face cache, where no output
        should be written by default.
        """
        return self.path if self.kind == "local" else Path(model_name(self.model))


def resolve_source(
    model: str,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    token: str | bool | None = None,
    cache_dir: str | None = None,
    missing: str = "no such file or directory",
    what: str = "the model",
) -> Source:
    """Turns a local path, ``builtin:NAME`` or Hub id into a local directory.

    A path that exists is used as is and never sent to the Hub. A Hub id is downloaded into the
    normal Hugging Face cache (safetensors only unless ``allow_pickle``), honouring ``revision``,
    ``HF_ENDPOINT`` and offline mode (a cached snapshot is used when the Hub cannot be reached).

    Args:
        model: a local path, ``builtin:NAME`` or a Hub id.
        revision: Hub revision (branch, tag or commit); refused for local paths.
        allow_pickle: also download ``*.bin`` / ``*.pt`` weights.
        token: Hub token (default: the usual Hugging Face sources).
        cache_dir: Hugging Face cache directory (default: the usual one).
        missing: how to word a path that does not exist.
        what: what ``model`` names, for messages ("the model", "the adapter").

    Returns:
        The local directory and what to record about it.

    Raises:
        InputError: a missing path, an unknown built-in, a gated repo or a missing revision.
        HubUnavailableError: the id cannot be fetched (offline or unreachable and not cached, no such repo).
    """
    kind, where = locate(model, revision=revision, missing=missing)
    if kind != "hub":
        return Source(path=Path(where), kind=kind, model=model)
    patterns = SNAPSHOT_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    snap = snapshot(model, revision=revision, patterns=patterns, token=token, cache_dir=cache_dir, what=what)
    return Source(path=snap.path, kind="hub", model=model, revision=revision, commit=snap.commit)


__all__ = ["Source", "resolve_source"]
