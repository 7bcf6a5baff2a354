"""Building the inspection of a Hub repo from the headers the Hub room reads (range requests, no data).

Offline, or when the Hub cannot be reached, the repo is read from the local Hugging Face cache when
it is there. This module never sees an HTTP exception: :mod:`vhtool.hub` translates them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhtool.checkpoint.catalogue import CONFIG_FILE
from vhtool.checkpoint.inspect.adapter import adapter_record, adapter_report
from vhtool.checkpoint.inspect.local import load_local
from vhtool.checkpoint.inspect.model import (
    PART_ADAPTER,
    PART_MODEL,
    PART_SIDECAR,
    AdapterReport,
    Loaded,
    SourceInfo,
    Tensor,
)
from vhtool.checkpoint.layout import (
    INDEX_FILE,
    MANIFEST_FILE,
    SIDECAR_FILE,
    SINGLE_FILE,
    Checkpoint,
    TensorLocation,
    read_json_object,
)
from vhtool.checkpoint.manifest import Manifest
from vhtool.checkpoint.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DEFAULT_ADAPTER_SUBFOLDER
from vhtool.checkpoint.safetensors_io import DTYPE_SIZES, SafetensorsHeader, TensorInfo
from vhtool.errors import CheckpointError, InputError

if TYPE_CHECKING:
    from vhtool.hub.headers import RemoteRepo, RemoteTensor


def load_hub(repo_id: str, *, revision: str | None, token: str | bool | None) -> Loaded:
    """Reads a Hub repo's headers; offline or unreachable, its cached snapshot.

    Raises:
        InputError: not a checkpoint, a gated repo or a missing revision.
        CheckpointError: a malformed remote header or index.
        HubUnavailableError: no such repo, or offline/unreachable and not cached.
    """
    from vhtool.hub.headers import open_remote_repo

    repo = open_remote_repo(repo_id, revision=revision, token=token)
    if repo is None:
        return _load_cached(repo_id, revision=revision)
    return _load_remote(repo)


def _load_cached(repo_id: str, *, revision: str | None) -> Loaded:
    from vhtool.hub.download import cached_snapshot

    snap = cached_snapshot(repo_id, revision=revision)
    loaded = load_local(snap.path, SourceInfo(kind="hub", location=repo_id, revision=revision, commit=snap.commit))
    loaded.notes.append("offline: read from the local Hugging Face cache")
    return loaded


def _load_remote(repo: RemoteRepo) -> Loaded:
    where = repo.where
    if CONFIG_FILE not in repo.files:
        raise InputError(f"{where}: not a checkpoint (no {CONFIG_FILE} in the repo).")
    if SINGLE_FILE not in repo.files and INDEX_FILE not in repo.files:
        raise InputError(f"{where}: not a checkpoint (no {SINGLE_FILE} or {INDEX_FILE} in the repo).")
    config = read_json_object(repo.download(CONFIG_FILE), CONFIG_FILE)
    manifest = (
        Manifest.from_json(read_json_object(repo.download(MANIFEST_FILE), MANIFEST_FILE))
        if MANIFEST_FILE in repo.files
        else None
    )
    weights = repo.weights()
    if weights.sharded:
        missing = sorted(set(weights.weight_map.values()) - repo.files)
        if missing:
            raise CheckpointError(f"{where}: the index names {missing[0]!r}, which is not in the repo.")
    tensors: list[Tensor] = []
    locs: dict[str, TensorLocation] = {}
    for fname, header in weights.files.items():
        for tname, t in header.tensors.items():
            ti = tensor_info(t, where=f"{where}/{fname}")
            if tname in locs:
                raise CheckpointError(f"{where}: tensor {tname!r} is stored in both {locs[tname].file} and {fname}.")
            locs[tname] = TensorLocation(file=fname, info=ti)
            tensors.append(Tensor(tname, tname, ti, fname, PART_MODEL))
    sidecar: SafetensorsHeader | None = None
    if SIDECAR_FILE in repo.files:
        sm = repo.file_header(SIDECAR_FILE)
        stensors = {n: tensor_info(t, where=f"{where}/{SIDECAR_FILE}") for n, t in sm.tensors.items()}
        sidecar = SafetensorsHeader(
            path=Path(SIDECAR_FILE), header_size=0, tensors=stensors, metadata=dict(sm.metadata), file_size=0
        )
        tensors.extend(Tensor(f"{SIDECAR_FILE}:{n}", n, ti, SIDECAR_FILE, PART_SIDECAR) for n, ti in stensors.items())
    ckpt = Checkpoint(
        path=Path(repo.repo_id),
        config=config,
        weight_files=sorted(weights.files),
        headers={},
        tensors=locs,
        index={"metadata": weights.metadata, "weight_map": weights.weight_map} if weights.sharded else None,
        sidecar=sidecar,
        manifest=manifest,
    )
    adapter, adapter_tensors = _remote_adapter(repo, ckpt)
    tensors.extend(adapter_tensors)
    src = SourceInfo(kind="hub", location=repo.repo_id, revision=repo.revision, commit=repo.commit)
    layout = "sharded" if weights.sharded else "single-file"
    return Loaded(source=src, ckpt=ckpt, layout=layout, tensors=tensors, adapter=adapter)


def tensor_info(t: RemoteTensor, *, where: str) -> TensorInfo:
    """A TensorInfo from a remote header entry, validated like a local header.

    Raises:
        CheckpointError: an unknown dtype, or offsets that disagree with the shape.
    """
    dtype, shape, offsets = t.dtype, list(t.shape), list(t.data_offsets)
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{where}: tensor {t.name!r} has unknown dtype {dtype!r}.")
    n = 1
    for d in shape:
        n *= d
    if len(offsets) != 2 or offsets[1] - offsets[0] != n * DTYPE_SIZES[dtype]:
        raise CheckpointError(f"{where}: tensor {t.name!r} {dtype}{shape} disagrees with its data_offsets {offsets}.")
    return TensorInfo(name=t.name, dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _remote_adapter(repo: RemoteRepo, ckpt: Checkpoint) -> tuple[AdapterReport | None, list[Tensor]]:
    rec = adapter_record(ckpt.manifest, f"{DEFAULT_ADAPTER_SUBFOLDER}/{ADAPTER_CONFIG}" in repo.files)
    if rec is None:
        return None, []
    name, sub, recorded, problems = rec
    if problems:
        return adapter_report(name, sub, recorded, None, {}, problems, ckpt.config), []
    if any(part == ".." for part in sub.split("/")) or sub.startswith("/"):
        raise CheckpointError(
            f"{repo.repo_id}: vhtool.json names the reward adapter subfolder {sub!r}, outside the repo."
        )
    cfg: dict[str, Any] | None = None
    if f"{sub}/{ADAPTER_CONFIG}" not in repo.files:
        problems.append(f"{sub}/{ADAPTER_CONFIG} is missing")
    else:
        try:
            cfg = read_json_object(repo.download(f"{sub}/{ADAPTER_CONFIG}"), ADAPTER_CONFIG)
        except CheckpointError as exc:
            problems.append(str(exc))
    rel = f"{sub}/{ADAPTER_WEIGHTS}"
    tensors: list[Tensor] = []
    infos: dict[str, TensorInfo] = {}
    if rel not in repo.files:
        problems.append(f"{rel} is missing")
    else:
        for tname, t in repo.file_header(rel).tensors.items():
            ti = tensor_info(t, where=f"{repo.repo_id}/{rel}")
            infos[tname] = ti
            tensors.append(Tensor(f"{rel}:{tname}", tname, ti, rel, PART_ADAPTER))
    return adapter_report(name, sub, recorded, cfg, infos, problems, ckpt.config), tensors
