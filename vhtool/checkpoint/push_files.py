"""Which files of a checkpoint a push publishes, and the check that it is fit to publish. No Hub calls.

A checkpoint saved without a ``vhtool.json`` (``save_pretrained`` after training, or a PEFT policy folder) is
published with a generated one (:func:`generated_manifest`, :func:`collect_peft_files`), sent as bytes in the
same commit: nothing is written into the user's folder.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from vhtool.checkpoint.catalogue import init_copies
from vhtool.checkpoint.conventions import find_heads
from vhtool.checkpoint.copyio import hash_file
from vhtool.checkpoint.init_op import architecture_of
from vhtool.checkpoint.layout import (
    INDEX_FILE,
    MANIFEST_FILE,
    SIDECAR_FILE,
    Checkpoint,
    open_checkpoint,
    safe_member,
)
from vhtool.checkpoint.manifest import FileEntry, Manifest, manifest_text, symlinked_files
from vhtool.checkpoint.model_card import CARD_FILE
from vhtool.checkpoint.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from vhtool.checkpoint.unmanaged import (
    PUBLISHED_PEFT_HEAD,
    PeftFolder,
    adopted_manifest,
    open_peft_folder,
    read_peft_head,
)
from vhtool.errors import CheckpointError, VerificationError

#: Other top-level files a checkpoint may carry (tokenizer variants, processor configs), by suffix.
_EXTRA_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
#: Never part of a published checkpoint: pickle weights, locks, temp files, editor leftovers.
_NEVER_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".lock", ".tmp", ".part", ".incomplete", "~", ".swp")
#: vhtool's internal files that a checkpoint may carry but a published repo must not: the marker of a built-in.
_INTERNAL_FILES = {"builtin.json": "vhtool's marker of a built-in model, not part of the checkpoint"}


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
    """The checkpoint's files to publish (without the card) and the entries skipped, with why.

    Raises:
        CheckpointError: a file the checkpoint needs is a link leading outside it.
    """
    root = ckpt.path
    manifest = ckpt.manifest
    required = {"config.json", MANIFEST_FILE, *ckpt.weight_files}
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
                    if sub.name.startswith(".") or sub.name.endswith(_NEVER_SUFFIXES) or sub.is_dir():
                        skipped.append((rel, "not part of the reward adapter"))
                        continue
                    chosen.append((rel, _member(root, rel, required=True, link_out=False)))
            else:
                skipped.append((name + "/", "folder not referenced by vhtool.json"))
            continue
        if name in _INTERNAL_FILES and name not in required:
            skipped.append((name, _INTERNAL_FILES[name]))
            continue
        if name in required:
            chosen.append((name, _member(root, name, required=True, link_out=name in linked)))
            continue
        known = init_copies(name) or name == CARD_FILE
        if (
            name.endswith(_NEVER_SUFFIXES)
            or name.endswith(".safetensors")
            or not (known or name.endswith(_EXTRA_SUFFIXES))
        ):
            skipped.append((name, "not part of the checkpoint"))
            continue
        try:
            member = safe_member(root, name, "a checkpoint file")
        except CheckpointError:
            if known:
                raise
            skipped.append((name, "a link that points outside the checkpoint"))
            continue
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


def generated_manifest(ckpt: Checkpoint, files: list[LocalFile], *, by: str = "vhtool push") -> LocalFile:
    """The ``vhtool.json`` published with a checkpoint saved without one (bytes; the folder is not touched)."""
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
    return _generated_file(MANIFEST_FILE, manifest_text(manifest.stamped()).encode("utf-8"))


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
        elif name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CARD_FILE, PUBLISHED_PEFT_HEAD) or (
            name.endswith(_EXTRA_SUFFIXES) and not name.endswith(_NEVER_SUFFIXES)
        ):
            member = _member(root, name, required=True, link_out=False)
            files.append(LocalFile(name, member, member.stat().st_size, hash_file(member)))
        else:
            skipped.append((name, "not part of the checkpoint"))
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
    files.append(_generated_file(MANIFEST_FILE, manifest_text(manifest.stamped()).encode("utf-8")))
    return sorted(files, key=lambda f: f.path_in_repo), skipped, manifest


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
    "verify_for_push",
    "verify_peft_for_push",
]
