"""A checkpoint directory as files: config, weight files, index, headers, tensors. No torch."""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.catalogue import CONFIG_FILE, Kind, kind_of
from vhtool.checkpoint.catalogue import INDEX_FILE as INDEX_FILE
from vhtool.checkpoint.catalogue import MANIFEST_FILE as MANIFEST_FILE
from vhtool.checkpoint.catalogue import SIDECAR_FILE as SIDECAR_FILE
from vhtool.checkpoint.catalogue import SINGLE_FILE as SINGLE_FILE
from vhtool.checkpoint.jsonio import read_json_object as read_json_object
from vhtool.checkpoint.manifest import Manifest, read_manifest, symlinked_files
from vhtool.checkpoint.safetensors_io import SafetensorsHeader, TensorInfo, read_header
from vhtool.errors import CheckpointError, InputError


def safe_member(root: Path, name: str, what: str, *, allow_link_out: bool = False) -> Path:
    """Resolves ``name`` inside ``root``, refusing absolute paths, ``..`` and symlinks that leave ``root``.

    ``allow_link_out`` accepts a symlink leading out of ``root`` (only for weight files that ``vhtool.json``
    records as placed by ``--link symlink``); the name itself must still be inside ``root``.
    """
    if not name or os.path.isabs(name) or "\\" in name or any(part == ".." for part in Path(name).parts):
        raise CheckpointError(f"{root}: {what} names {name!r}, which is not a file inside the checkpoint.")
    candidate = root / name
    if allow_link_out and candidate.is_symlink() and "/" not in name.strip("/"):
        return candidate
    try:
        real = candidate.resolve()
    except OSError as exc:  # e.g. a symlink loop
        raise CheckpointError(f"{candidate}: cannot resolve ({exc}).") from exc
    if not any(real == r or r in real.parents for r in allowed_roots(root)):
        raise CheckpointError(f"{candidate}: {what} is a link that points outside the checkpoint ({real}).")
    return candidate


def allowed_roots(root: Path) -> list[Path]:
    """Where files of ``root`` may really live: inside it, or in its repo's ``blobs/`` for a Hub-cache snapshot."""
    real_root = root.resolve()
    roots = [real_root]
    if real_root.parent.name == "snapshots" and real_root.parent.parent.name.startswith("models--"):
        roots.append(real_root.parent.parent / "blobs")
    return roots


@dataclass(frozen=True)
class TensorLocation:
    """Where one tensor lives: its file (relative name) and header entry."""

    file: str
    info: TensorInfo


@dataclass
class Checkpoint:
    """A local checkpoint directory, read from its config, index and safetensors headers only."""

    path: Path
    config: dict[str, Any]
    weight_files: list[str]
    headers: dict[str, SafetensorsHeader]
    tensors: dict[str, TensorLocation]
    index: dict[str, Any] | None = None
    sidecar: SafetensorsHeader | None = None
    manifest: Manifest | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Weight files present but not loaded, because transformers' precedence (``model.safetensors`` before
    #: the index) skips them: left behind by a save into an older sharded checkpoint. Loading warns;
    #: ``verify`` fails naming them.
    ignored_weights: tuple[str, ...] = ()

    @property
    def sharded(self) -> bool:
        return self.index is not None

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(self.config.get("is_encoder_decoder", False))

    def weight_path(self, name: str) -> Path:
        """The path of weight file ``name``, checked to stay inside the checkpoint (or be a recorded symlink)."""
        return safe_member(self.path, name, "the index", allow_link_out=name in symlinked_files(self.manifest))

    def dominant_dtype(self, skip: set[str] | frozenset[str] = frozenset()) -> str:
        """The dtype holding most parameters (the checkpoint's compute dtype), ignoring ``skip`` tensors."""
        counts: dict[str, int] = {}
        for name, loc in self.tensors.items():
            if name not in skip:
                counts[loc.info.dtype] = counts.get(loc.info.dtype, 0) + loc.info.numel
        return max(counts, key=lambda k: counts[k]) if counts else "F32"

    @property
    def total_bytes(self) -> int:
        return sum(h.file_size for h in self.headers.values())


class ManifestRead(enum.Enum):
    """Marks that :func:`open_checkpoint` reads ``vhtool.json`` itself."""

    FROM_DIRECTORY = "from-directory"


def open_checkpoint(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    manifest: Manifest | None | ManifestRead = ManifestRead.FROM_DIRECTORY,
) -> Checkpoint:
    """Opens a local checkpoint directory by reading only config, index, manifest and headers.

    Args:
        path: the directory.
        allow_pickle: only changes the hint given for a directory holding pickle weights only.
        manifest: the manifest, when the caller has read (or failed to read) it already; by default
            ``vhtool.json`` is read and type-checked here.

    Raises:
        InputError: the path is missing or not a checkpoint directory.
        CheckpointError: a file is malformed, inconsistent or points outside the directory.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root}: no such file or directory.")
    if not root.is_dir():
        raise InputError(f"{root}: not a checkpoint directory (expected a folder with config.json and weights).")
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise InputError(f"{root}: not a checkpoint (no {CONFIG_FILE}).")
    safe_member(root, CONFIG_FILE, CONFIG_FILE)
    config = read_json_object(cfg_path, CONFIG_FILE)

    index: dict[str, Any] | None = None
    weight_files: list[str]
    ignored = conflicting_weight_files(root)
    if (root / SINGLE_FILE).is_file():  # transformers' precedence: the single file wins over an index
        weight_files = [SINGLE_FILE]
    elif (root / INDEX_FILE).is_file():
        safe_member(root, INDEX_FILE, "the index")
        index = read_json_object(root / INDEX_FILE, "the safetensors index")
        wmap = index.get("weight_map")
        if not isinstance(wmap, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
            raise CheckpointError(f"{root / INDEX_FILE}: weight_map must map tensor names to file names.")
        weight_files = sorted(set(wmap.values()))
    else:
        pickles = sorted(n for n in os.listdir(root) if kind_of(n) is Kind.PICKLE)
        if pickles:
            hint = (
                "convert it to safetensors first" if not allow_pickle else "pickle sources are loaded by `init` only"
            )
            raise CheckpointError(
                f"{root}: holds only pickle weights ({', '.join(pickles)}); vhtool never unpickles them by default "
                f"({hint}; `vhtool init --allow-pickle` reads them with weights_only=True)."
            )
        raise InputError(f"{root}: not a checkpoint (no {SINGLE_FILE} or {INDEX_FILE}).")

    if isinstance(manifest, ManifestRead):
        manifest = read_local_manifest(root)
    linked = symlinked_files(manifest)
    headers: dict[str, SafetensorsHeader] = {}
    tensors: dict[str, TensorLocation] = {}
    for name in weight_files:
        member = safe_member(root, name, "the index", allow_link_out=name in linked)
        if not member.is_file():
            raise CheckpointError(f"{root}: the index names {name!r}, which does not exist.")
        hdr = read_header(member)
        headers[name] = hdr
        for tname, info in hdr.tensors.items():
            if tname in tensors:
                raise CheckpointError(f"{root}: tensor {tname!r} is stored in both {tensors[tname].file} and {name}.")
            tensors[tname] = TensorLocation(file=name, info=info)
    if index is not None:
        wmap = index["weight_map"]
        missing = sorted(set(wmap) - set(tensors))
        if missing:
            raise CheckpointError(
                f"{root / INDEX_FILE}: weight_map names {len(missing)} tensor(s) absent from their files "
                f"(first: {missing[0]!r})."
            )
        for tname, loc in tensors.items():
            if wmap.get(tname) != loc.file:
                raise CheckpointError(
                    f"{root / INDEX_FILE}: tensor {tname!r} is in {loc.file} but the index says {wmap.get(tname)!r}."
                )

    sidecar = None
    if (root / SIDECAR_FILE).is_file():
        sidecar = read_header(safe_member(root, SIDECAR_FILE, "the value-head sidecar"))
    return Checkpoint(
        path=root,
        config=config,
        weight_files=weight_files,
        headers=headers,
        tensors=tensors,
        index=index,
        sidecar=sidecar,
        manifest=manifest,
        ignored_weights=ignored,
    )


def conflicting_weight_files(root: Path) -> tuple[str, ...]:
    """The index and the files it names when a ``model.safetensors`` sits beside them (empty when no conflict).

    transformers loads ``model.safetensors`` first and never reads such an index, so its files are stale
    leftovers of an older sharded checkpoint (e.g. ``save_pretrained`` into a folder ``vhtool init`` made).
    """
    if not ((root / SINGLE_FILE).is_file() and (root / INDEX_FILE).is_file()):
        return ()
    try:
        wmap = json.loads((root / INDEX_FILE).read_text(encoding="utf-8")).get("weight_map") or {}
        named = sorted({f for f in wmap.values() if isinstance(f, str) and f != SINGLE_FILE})
    except (OSError, ValueError, AttributeError, RecursionError):
        named = []
    return (INDEX_FILE, *[f for f in named if (root / f).exists()])


def read_local_manifest(root: Path) -> Manifest | None:
    """The type-checked ``vhtool.json`` of a local directory, or None when it has none.

    Raises:
        CheckpointError: the manifest is a link leading outside, unreadable, not JSON, or malformed.
    """
    if not (root / MANIFEST_FILE).is_file():
        return None
    return read_manifest(safe_member(root, MANIFEST_FILE, MANIFEST_FILE))


def hidden_size(config: dict[str, Any]) -> int:
    """The width of the last hidden state, found from a config dict as transformers would expose it.

    Priority follows what the value head is applied to: OPT's ``word_embed_proj_dim`` (its output
    projection), then ``hidden_size`` and its per-family aliases, then nested text/decoder configs.
    """
    for key in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model", "dim", "model_dim", "embed_dim"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    for nested in ("text_config", "decoder"):
        sub = config.get(nested)
        if isinstance(sub, dict):
            try:
                return hidden_size(sub)
            except InputError:
                pass
    raise InputError(
        "config.json has no usable hidden size (looked for word_embed_proj_dim, hidden_size, n_embd, d_model, "
        "text_config.hidden_size, decoder.hidden_size)."
    )
