"""Finding a model and its value-head weights: one resolver for local paths, Hub ids and built-ins.

A path that exists locally is never sent to the Hub. Value-head tensors are read selectively: from
a sharded checkpoint only the shard(s) the index names for ``v_head.*`` are opened, and only those
tensors are read from them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.checkpoint.catalogue import INDEX_FILE, PICKLE_FILE, SIDECAR_FILE, SINGLE_FILE
from vhtool.checkpoint.layout import (
    conflicting_weight_files,
    read_local_manifest,
    safe_member,
)
from vhtool.checkpoint.manifest import Manifest, RewardAdapterInfo, read_manifest, symlinked_files
from vhtool.checkpoint.names import ADAPTER_CONFIG, MANIFEST_FILE
from vhtool.checkpoint.safetensors_io import read_header
from vhtool.errors import CheckpointError, InputError
from vhtool.hub.download import cached_snapshot, download_file, reachable
from vhtool.hub.names import locate


@dataclass(frozen=True)
class Resolved:
    """Where a ``from_pretrained`` argument points."""

    name: str
    load_from: str
    local_dir: Path | None
    repo_id: str | None
    revision: str | None = None
    token: Any = None
    cache_dir: str | None = None
    adapter_config_dir: Path | None = None
    manifest: Manifest | None = None

    @property
    def manifest_reward(self) -> RewardAdapterInfo | None:
        """The reward adapter the checkpoint's ``vhtool.json`` records, if any."""
        return self.manifest.reward_adapter if self.manifest is not None else None


def resolve_pretrained(
    name: str, *, revision: str | None = None, token: Any = None, cache_dir: str | None = None
) -> Resolved:
    """Resolves a local directory, ``builtin:NAME`` or Hub id, validating local safetensors headers up front.

    A Hub id is looked up once (no retries): when the Hub answers, the model is loaded from it; offline
    or unreachable, its snapshot in the local cache is used, so that transformers never retries either.

    Raises:
        InputError: a missing path, not a model directory, a gated repo or a missing revision.
        HubUnavailableError: no such repo, or offline/unreachable and not cached.
    """
    kind, where = locate(name, missing="no such directory")
    if kind == "builtin":
        return resolve_pretrained(str(where))
    if kind == "local":
        return _local(name, Path(where))
    if not reachable(name, revision=revision, token=token):
        snap = cached_snapshot(name, revision=revision, cache_dir=cache_dir)
        return _local(name, snap.path)
    kw = {"revision": revision, "token": token, "cache_dir": cache_dir}
    adapter_file = download_file(name, ADAPTER_CONFIG, **kw)
    manifest_file = download_file(name, MANIFEST_FILE, **kw)
    manifest = read_manifest(manifest_file) if manifest_file else None
    return Resolved(
        name=name,
        load_from=name,
        local_dir=None,
        repo_id=name,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        adapter_config_dir=adapter_file.parent if adapter_file else None,
        manifest=manifest,
    )


def _local(name: str, path: Path) -> Resolved:
    if not path.is_dir():
        raise InputError(f"{path}: not a model directory.")
    for st in sorted(path.glob("*.safetensors")):
        read_header(st)  # a corrupt or truncated file fails here with a clear message, before transformers
    adapter = path if (path / ADAPTER_CONFIG).is_file() else None
    manifest = read_local_manifest(path)
    return Resolved(
        name=name, load_from=str(path), local_dir=path, repo_id=None, adapter_config_dir=adapter, manifest=manifest
    )


def _read_v_head(path: Path, keys: list[str] | None = None) -> dict[str, Any]:
    from safetensors import safe_open

    out: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as fh:
        for k in fh.keys():  # noqa: SIM118 - safe_open is not a Mapping
            if k.startswith("v_head.") and (keys is None or k in keys):
                out[k] = fh.get_tensor(k)
    return out


def find_value_head_state(resolved: Resolved, *, allow_pickle: bool = False) -> tuple[dict[str, Any], str | None]:
    """Reads only the value-head tensors of a checkpoint; returns them and where they were found (or None)."""
    if resolved.local_dir is not None:
        root = resolved.local_dir
        candidates: list[tuple[Path, list[str] | None, str]] = []
        stale = conflicting_weight_files(root)
        if stale:
            import warnings

            warnings.warn(
                f"{root}: model.safetensors sits beside {', '.join(stale)}; loading model.safetensors (as "
                "transformers and TRL do) and ignoring the others, which an older sharded checkpoint left behind.",
                stacklevel=3,
            )
        if (root / SINGLE_FILE).is_file():  # transformers' precedence: the single file wins over an index
            candidates.append((root / SINGLE_FILE, None, SINGLE_FILE))
        elif (root / INDEX_FILE).is_file():
            index = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
            wmap = index.get("weight_map") or {}
            files: dict[str, list[str]] = {}
            for k, f in wmap.items():
                if k.startswith("v_head."):
                    files.setdefault(f, []).append(k)
            linked = symlinked_files(resolved.manifest)  # `--link symlink` outputs point outside, by design
            for f, names in sorted(files.items()):
                candidates.append((safe_member(root, f, "the index", allow_link_out=f in linked), names, f))
        if (root / SIDECAR_FILE).is_file():
            candidates.append((safe_member(root, SIDECAR_FILE, "the sidecar"), None, SIDECAR_FILE))
        for path, keys, label in candidates:
            state = _read_v_head(path, keys)
            if state:
                return state, label
        pickled = root / PICKLE_FILE
        if pickled.is_file():
            if not allow_pickle:
                import warnings

                warnings.warn(
                    f"{pickled} may hold value-head weights but is a pickle; pass allow_pickle=True to read it "
                    "(with weights_only=True).",
                    stacklevel=3,
                )
            else:
                import torch

                state = {
                    k: v
                    for k, v in torch.load(pickled, map_location="cpu", weights_only=True).items()
                    if k.startswith("v_head.")
                }
                if state:
                    return state, PICKLE_FILE
        return {}, None

    assert resolved.repo_id is not None
    kw = {"revision": resolved.revision, "token": resolved.token, "cache_dir": resolved.cache_dir}
    single = download_file(resolved.repo_id, SINGLE_FILE, **kw)
    if single:
        state = _read_v_head(Path(single))
        if state:
            return state, f"{resolved.repo_id}/{SINGLE_FILE}"
    else:
        index_file = download_file(resolved.repo_id, INDEX_FILE, **kw)
        if index_file:
            wmap = json.loads(Path(index_file).read_text(encoding="utf-8")).get("weight_map") or {}
            shards = sorted({f for k, f in wmap.items() if k.startswith("v_head.")})
            state = {}
            for shard in shards:
                if os.path.isabs(shard) or ".." in Path(shard).parts:
                    raise CheckpointError(f"{resolved.repo_id}: the index names {shard!r}, outside the repo.")
                local = download_file(resolved.repo_id, shard, **kw)
                if local:
                    state.update(_read_v_head(Path(local)))
            if state:
                return state, f"{resolved.repo_id}/{', '.join(shards)}"
    sidecar = download_file(resolved.repo_id, SIDECAR_FILE, **kw)
    if sidecar:
        state = _read_v_head(Path(sidecar))
        if state:
            return state, f"{resolved.repo_id}/{SIDECAR_FILE}"
    return {}, None
