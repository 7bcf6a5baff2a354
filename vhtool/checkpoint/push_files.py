"""Which files of a checkpoint a push publishes, and the check that it is fit to publish. No Hub calls.

A checkpoint saved without a ``vhtool.json`` (``save_pretrained`` after training, or a PEFT policy folder) is
published with a generated one (:func:`generated_manifest`, :func:`collect_peft_files`), sent as bytes in the
same commit: nothing is written into the user's folder. Every push publishes its ``vhtool.json`` with the list of
the paths it published (:func:`published_manifest`), which is what the next push may delete.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from vhtool.checkpoint import catalogue
from vhtool.checkpoint.catalogue import ADAPTER_WEIGHTS, CONFIG_FILE, INDEX_FILE, MANIFEST_FILE, SIDECAR_FILE, Kind
from vhtool.checkpoint.conventions import find_heads
from vhtool.checkpoint.copyio import hash_file
from vhtool.checkpoint.init_op import architecture_of
from vhtool.checkpoint.layout import Checkpoint, open_checkpoint, safe_member
from vhtool.checkpoint.manifest import FileEntry, Manifest, manifest_text, symlinked_files
from vhtool.checkpoint.unmanaged import (
    PUBLISHED_PEFT_HEAD,
    PeftFolder,
    adopted_manifest,
    open_peft_folder,
    read_peft_head,
)
from vhtool.errors import CheckpointError, VerificationError


def _not_published(name: str) -> str | None:
    """Why ``push`` leaves the top-level file ``name`` out (the catalogue's :func:`~catalogue.push_publishes`)."""
    if catalogue.push_publishes(name):
        return None
    kind = catalogue.kind_of(name)
    if kind is Kind.INTERNAL:
        return "vhtool's marker of a built-in model, not part of the checkpoint"
    if kind is Kind.PICKLE:
        return "pickled weights are never published"
    if kind is Kind.TRAINING:
        return "training state, not part of the checkpoint"
    return "not part of the checkpoint"


@dataclass(frozen=True)
class LocalFile:
    """A file to publish: where it goes in the repo, its local path (or generated content), size and sha256."""

    path_in_repo: str
    local: Path | None
    size: int
    sha256: str
    content: bytes | None = None


def _refuse_unless_verified(path: Path, *, allow_pickle: bool) -> None:
    from vhtool.checkpoint.verify_op import verify_checkpoint

    result = verify_checkpoint(path, allow_pickle=allow_pickle)  # InputError when not a checkpoint at all
    if not result.ok:
        problems = [f"{c.name}: {c.detail}" for c in result.failures]
        cmd = f"vhtool verify {shlex.quote(str(path))}" + (" --allow-pickle" if allow_pickle else "")
        more = f" (+{len(problems) - 1} more; `{cmd}` lists them)" if len(problems) > 1 else ""
        raise VerificationError(
            f"{path}: refusing to push, the checkpoint fails verification: {problems[0]}{more}", problems=problems
        )


def verify_peft_for_push(path: Path, *, allow_pickle: bool = False) -> PeftFolder:
    """Refuses a PEFT policy folder that is not fit to publish; returns it opened.

    Raises:
        VerificationError: the adapter or the value head is missing or malformed, or the head is a pickle
            and ``allow_pickle`` is false (exit 1).
    """
    _refuse_unless_verified(path, allow_pickle=allow_pickle)
    return open_peft_folder(path)


def verify_for_push(path: Path) -> Checkpoint:
    """Refuses a checkpoint that is not fit to publish; returns it opened.

    Raises:
        InputError: not a checkpoint at all (exit 2).
        VerificationError: the value head is missing or malformed, the index is inconsistent, or files no
            longer match the sha256 recorded in ``vhtool.json`` (exit 1).
    """
    try:
        ckpt: Checkpoint | None = open_checkpoint(path)
    except CheckpointError:
        ckpt = None  # malformed: verify names the problem below (exit 1)
    _refuse_unless_verified(path, allow_pickle=False)
    if ckpt is None:  # pragma: no cover - verify passed, so the layout opens
        ckpt = open_checkpoint(path)
    return ckpt


def _recorded_sha(manifest: Manifest | None, name: str) -> str | None:
    """The sha256 ``vhtool.json`` records for ``name`` (already checked by verify), if any."""
    if manifest is None:
        return None
    entry = manifest.files.get(name)
    ra = manifest.reward_adapter
    if entry is None and ra is not None and ra.subfolder is not None and ra.files is not None and not ra.files_listed:
        sub = ra.subfolder.rstrip("/")
        if name.startswith(sub + "/"):
            entry = ra.files.get(name[len(sub) + 1 :])
    return entry.sha256 if entry is not None else None


def collect_files(ckpt: Checkpoint) -> tuple[list[LocalFile], list[tuple[str, str]]]:
    """The checkpoint's files to publish (without the card and ``vhtool.json``) and the entries skipped, with why.

    What the checkpoint is made of (config, the weights and index it uses, the sidecar, the reward adapter
    subfolder vhtool.json names) is always published; every other top-level file only when the catalogue says
    ``push`` publishes its kind (:func:`~vhtool.checkpoint.catalogue.push_publishes`), and weights or an index the
    checkpoint does not use never. ``vhtool.json`` is written by :func:`published_manifest`.

    Raises:
        CheckpointError: a file the checkpoint needs is a link leading outside it.
    """
    root = ckpt.path
    manifest = ckpt.manifest
    required = {CONFIG_FILE, *ckpt.weight_files}
    if ckpt.index is not None:
        required.add(INDEX_FILE)
    if ckpt.sidecar is not None:
        required.add(SIDECAR_FILE)
    linked = symlinked_files(manifest)
    adapter_dir: str | None = None
    ra = manifest.reward_adapter if manifest is not None else None
    if ra is not None and ra.subfolder is not None:
        adapter_dir = ra.subfolder.strip("/")

    chosen: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith("."):
            skipped.append((name, "hidden file or temporary sibling"))
            continue
        if entry.is_dir() and not entry.is_symlink():
            if name == adapter_dir:
                for sub in sorted(entry.iterdir(), key=lambda p: p.name):
                    rel = f"{name}/{sub.name}"
                    if sub.is_dir() or not catalogue.push_publishes(sub.name):
                        skipped.append((rel, "not part of the reward adapter"))
                        continue
                    chosen.append((rel, _member(root, rel, required=True, link_out=False)))
            else:
                skipped.append((name + "/", "folder not referenced by vhtool.json"))
            continue
        if name == MANIFEST_FILE:
            continue  # published with the list of published files (published_manifest)
        if name in required:
            chosen.append((name, _member(root, name, required=True, link_out=name in linked)))
            continue
        why = _not_published(name)
        if why is None and catalogue.kind_of(name) in (Kind.WEIGHTS, Kind.INDEX):
            why = "weights the checkpoint does not use"
        if why is not None:
            skipped.append((name, why))
            continue
        member = safe_member(root, name, "a checkpoint file")  # verify refused a link leaving the checkpoint
        if not member.is_file():
            skipped.append((name, "not a regular file"))
            continue
        chosen.append((name, member))

    files = []
    for rel, member in chosen:
        size = member.stat().st_size
        sha = _recorded_sha(manifest, rel) or hash_file(member)
        files.append(LocalFile(path_in_repo=rel, local=member, size=size, sha256=sha))
    return files, skipped


def generated_manifest(ckpt: Checkpoint, files: list[LocalFile], *, by: str = "vhtool push") -> Manifest:
    """The ``vhtool.json`` published with a checkpoint saved without one (the folder is not touched)."""
    heads = [h for h in find_heads(ckpt) if h.convention in ("vhtool", "sidecar")]
    head = heads[0] if heads else None
    weights = {*ckpt.weight_files, *([SIDECAR_FILE] if ckpt.sidecar is not None else [])}
    manifest = adopted_manifest(
        ckpt.path,
        kind="save_pretrained",
        by=by,
        architecture=architecture_of(ckpt.config, ckpt.path),
        head_file=head.file if head is not None else "",
        files={f.path_in_repo: FileEntry(size=f.size, sha256=f.sha256) for f in files if f.path_in_repo in weights},
        hidden=head.shape[-1] if head is not None else None,
        head_dtype=head.dtype if head is not None else None,
        convention=head.convention if head is not None else "vhtool",
        model_dtype=ckpt.dominant_dtype(),
        layout="sharded" if ckpt.sharded else "single-file",
    )
    return manifest.stamped()


def published_manifest(manifest: Manifest, files: list[LocalFile], *, local: Path | None) -> LocalFile:
    """The ``vhtool.json`` a push publishes: ``manifest`` with ``published``, every path of this push, sorted.

    The list is what lets the next push delete a file this one published and the checkpoint no longer has, and
    nothing else (:func:`~vhtool.checkpoint.catalogue.push_may_delete`). The bytes depend only on the manifest and
    the paths, so pushing an unchanged checkpoint again finds the remote ``vhtool.json`` unchanged.

    Args:
        manifest: the checkpoint's manifest (read from its ``vhtool.json``, or generated).
        files: every other file this push publishes (the card included when vhtool publishes one).
        local: the checkpoint's own ``vhtool.json`` when it has one (the published copy is reported as the
            checkpoint's), None for a generated one.
    """
    paths = sorted({f.path_in_repo for f in files if f.path_in_repo != MANIFEST_FILE} | {MANIFEST_FILE})
    content = manifest_text(manifest.replace(published=tuple(paths))).encode("utf-8")
    return LocalFile(MANIFEST_FILE, local, len(content), hashlib.sha256(content).hexdigest(), content=content)


def _generated_file(name: str, content: bytes) -> LocalFile:
    return LocalFile(name, None, len(content), hashlib.sha256(content).hexdigest(), content=content)


def collect_peft_files(
    folder: PeftFolder, *, allow_pickle: bool
) -> tuple[list[LocalFile], list[tuple[str, str]], Manifest]:
    """A PEFT policy folder's files to publish, the entries skipped, and its generated manifest.

    The value head is published as ``model.safetensors`` (where TRL 1.12.0 and vhtool read it): as it is when
    the folder has that file, else generated from ``value_head.safetensors`` (vhtool 0.1.0) or TRL's
    ``pytorch_model.bin`` (``allow_pickle``; pickles themselves are never published).
    """
    root = folder.path
    head = read_peft_head(folder, allow_pickle=allow_pickle)
    files: list[LocalFile] = []
    skipped: list[tuple[str, str]] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith("."):
            skipped.append((name, "hidden file or temporary sibling"))
        elif entry.is_dir() and not entry.is_symlink():
            skipped.append((name + "/", "folder not part of a PEFT policy"))
        elif name == head.file and name != PUBLISHED_PEFT_HEAD:
            skipped.append((name, f"published as {PUBLISHED_PEFT_HEAD} (the same tensors, as safetensors)"))
        elif name == MANIFEST_FILE:
            skipped.append((name, "a PEFT policy folder's own vhtool.json is replaced by the generated one"))
        elif (why := _peft_not_published(name)) is not None:
            skipped.append((name, why))
        else:
            member = _member(root, name, required=True, link_out=False)
            files.append(LocalFile(name, member, member.stat().st_size, hash_file(member)))
    if head.file != PUBLISHED_PEFT_HEAD:
        files.append(_generated_file(PUBLISHED_PEFT_HEAD, head.safetensors_bytes()))
    weights = (ADAPTER_WEIGHTS, PUBLISHED_PEFT_HEAD)
    manifest = adopted_manifest(
        root,
        kind="peft",
        by="vhtool push",
        architecture=folder.architecture,
        head_file=PUBLISHED_PEFT_HEAD,
        files={f.path_in_repo: FileEntry(size=f.size, sha256=f.sha256) for f in files if f.path_in_repo in weights},
        hidden=head.weight_shape[-1],
        head_dtype=head.dtype,
    )
    return sorted(files, key=lambda f: f.path_in_repo), skipped, manifest.stamped()


def _peft_not_published(name: str) -> str | None:
    """Why ``push`` leaves a PEFT policy folder's file out: the catalogue's answer, and weights other than the head."""
    why = _not_published(name)
    if why is None and catalogue.kind_of(name) in (Kind.WEIGHTS, Kind.INDEX) and name != PUBLISHED_PEFT_HEAD:
        return "weights the PEFT policy does not use"
    return why


def _member(root: Path, rel: str, *, required: bool, link_out: bool) -> Path:
    member = safe_member(root, rel, "a checkpoint file", allow_link_out=link_out)
    if required and not member.is_file():
        raise CheckpointError(f"{member}: part of the checkpoint but not a regular file.")
    return member


__all__ = [
    "LocalFile",
    "collect_files",
    "collect_peft_files",
    "generated_manifest",
    "published_manifest",
    "verify_for_push",
    "verify_peft_for_push",
]
