"""Resolving model sources (local directory, Hub id, ``builtin:*``) to local directories. No torch.

This is the one resolver every reading command uses for its inputs: a path that exists is used as
is and never sent to the Hub; a built-in is the package's directory; a Hub id is a snapshot in the
normal Hugging Face cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.checkpoint.catalogue import (
    ADAPTER_CONFIG,
    INDEX_FILE,
    MANIFEST_FILE,
    PICKLE_INDEX_FILE,
    hub_metadata_names,
    hub_weight_names,
)
from vhtool.hub.download import Snapshot, snapshot
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
    normal Hugging Face cache, honouring ``revision``, ``HF_ENDPOINT`` and offline mode (a cached
    snapshot is used when the Hub cannot be reached): only what :func:`hub_snapshot` names, never
    ``consolidated.safetensors``, ``original/…`` or ``onnx/…``.

    Args:
        model: a local path, ``builtin:NAME`` or a Hub id.
        revision: Hub revision (branch, tag or commit); refused for local paths.
        allow_pickle: also download the pickled weights (``pytorch_model.bin`` or the shards its index names).
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
    snap = hub_snapshot(
        model, revision=revision, allow_pickle=allow_pickle, token=token, cache_dir=cache_dir, what=what
    )
    return Source(path=snap.path, kind="hub", model=model, revision=revision, commit=snap.commit)


def hub_snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    token: str | bool | None = None,
    cache_dir: str | None = None,
    what: str = "the model",
) -> Snapshot:
    """The checkpoint files of a Hub repo in the cache, fetched by exact name in two steps.

    First the small files (:func:`~vhtool.checkpoint.catalogue.hub_metadata_names`: config, tokenizer,
    ``vhtool.json``, the index, a top-level adapter config); then exactly the weights they name
    (:func:`~vhtool.checkpoint.catalogue.hub_weight_names`): the shards the index lists or the single file, the
    sidecar, the reward adapter subfolder ``vhtool.json`` records, a PEFT adapter's weights. The second step is
    pinned to the commit the first one read, so both halves come from the same revision. Offline, each step is
    answered from the cache when the files are there.

    Raises:
        HubUnavailableError: offline and not cached, or no such repo (exit 2).
        HubUnreachableError: the Hub cannot be reached and the files are not cached (exit 1).
        InputError: a gated repo or a missing revision.
    """
    kw: dict[str, Any] = {"token": token, "cache_dir": cache_dir, "what": what}
    meta = snapshot(repo_id, revision=revision, patterns=hub_metadata_names(allow_pickle=allow_pickle), **kw)
    manifest = _json_object(meta.path / MANIFEST_FILE)
    reward = manifest.get("reward_adapter") if manifest is not None else None
    subfolder = reward.get("subfolder") if isinstance(reward, dict) else None
    names = hub_weight_names(
        index=_json_object(meta.path / INDEX_FILE),
        adapter_subfolder=subfolder if isinstance(subfolder, str) else None,
        has_adapter_config=(meta.path / ADAPTER_CONFIG).is_file(),
        allow_pickle=allow_pickle,
        pickle_index=_json_object(meta.path / PICKLE_INDEX_FILE) if allow_pickle else None,
    )
    return snapshot(repo_id, revision=meta.commit or revision, patterns=names, **kw)


def _json_object(path: Path) -> dict[str, Any] | None:
    """A small JSON file of the snapshot as an object; None when absent or not a JSON object.

    A malformed file is reported later by whatever reads the checkpoint; here it only means nothing is named.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


__all__ = ["Source", "hub_snapshot", "resolve_source"]
