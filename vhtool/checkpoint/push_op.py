"""``vhtool push``: verify a checkpoint, compare it with the remote, and publish it in one commit.

``push_checkpoint`` verifies the checkpoint (:func:`vhtool.checkpoint.push_files.verify_for_push`),
lists the files that belong to it (:func:`~vhtool.checkpoint.push_files.collect_files`), compares
them with the remote revision by size, sha256 (LFS files) or git blob id (regular files), and
uploads what is new or changed in **one** commit through the Hub room (:mod:`vhtool.hub.commit`).
The published ``vhtool.json`` lists every path the push published; a later push deletes a remote
file only when that list names it or it is the other half of a single-file/sharded switch
(:func:`vhtool.checkpoint.catalogue.push_may_delete`).
Files are passed to ``huggingface_hub`` by path, never read into memory; the generated card is the
only file sent as bytes. The token is never written anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool._version import __version__
from vhtool.checkpoint.catalogue import CARD_FILE, INDEX_FILE, MANIFEST_FILE, push_may_delete
from vhtool.checkpoint.manifest import Manifest
from vhtool.checkpoint.model_card import CARD_MARKER, render_model_card
from vhtool.checkpoint.push_files import (
    LocalFile,
    collect_files,
    collect_peft_files,
    generated_manifest,
    published_manifest,
    verify_for_push,
    verify_peft_for_push,
)
from vhtool.checkpoint.unmanaged import is_peft_folder
from vhtool.errors import CheckpointError, InputError, OperationError
from vhtool.hub.commit import Upload, commit_files, endpoint
from vhtool.hub.errors import TOKEN_HELP
from vhtool.hub.names import locate, validate_repo_id
from vhtool.hub.remote_diff import file_status, git_blob_sha1_bytes
from vhtool.hub.remote_state import RemoteFile, RemoteState, read_remote_state, read_remote_text
from vhtool.hub.token import resolve_token

#: The status of every file of a dry run that could not read the remote (offline, unreachable).
NOT_CHECKED = "not checked"
#: Statuses of files a push sends (``not checked``: it would be sent unless the remote already has it).
_TO_UPLOAD = ("added", "changed", NOT_CHECKED)


@dataclass(frozen=True)
class PlannedFile:
    """One file of the push: where it goes, how big it is, and how it compares with the remote."""

    path_in_repo: str
    size: int
    sha256: str
    status: str  # added | changed | unchanged | deleted | not checked (a dry run that could not read the remote)
    origin: str  # checkpoint | generated | remote (a remote file to delete: see catalogue.push_may_delete)
    local: Path | None = None
    content: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path_in_repo,
            "size": self.size,
            "sha256": self.sha256,
            "status": self.status,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class PushResult:
    """The plan (``--dry-run``) or the outcome of a push."""

    checkpoint: Path
    repo_id: str
    revision: str
    endpoint: str
    dry_run: bool
    remote: RemoteState
    files: list[PlannedFile]
    skipped: list[tuple[str, str]]
    model_card: str  # generated | checkpoint | remote-kept
    pushed: bool = False
    commit_oid: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    repo_created: bool = False
    branch_created: bool = False
    notes: list[str] = field(default_factory=list)

    def paths(self, *statuses: str) -> list[str]:
        return [f.path_in_repo for f in self.files if f.status in statuses]

    @property
    def bytes_to_upload(self) -> int:
        """Bytes of the files to upload (an upper bound when the remote was not checked)."""
        return sum(f.size for f in self.files if f.status in _TO_UPLOAD)

    @property
    def nothing_to_push(self) -> bool:
        return not self.paths(*_TO_UPLOAD, "deleted")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "checkpoint": str(self.checkpoint),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "endpoint": self.endpoint,
            "dry_run": self.dry_run,
            "remote": self.remote.to_json(),
            "model_card": self.model_card,
            "files": [f.to_json() for f in self.files],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "bytes_to_upload": self.bytes_to_upload,
            "uploaded" if not self.dry_run else "to_upload": self.paths(*_TO_UPLOAD),
            "unchanged": self.paths("unchanged"),
            "deleted" if not self.dry_run else "to_delete": self.paths("deleted"),
            "nothing_to_push": self.nothing_to_push,
            "notes": list(self.notes),
        }
        if not self.dry_run:
            doc.update(
                {
                    "pushed": self.pushed,
                    "bytes_uploaded": self.bytes_to_upload if self.pushed else 0,
                    "commit": {"oid": self.commit_oid, "url": self.commit_url, "pr_url": self.pr_url}
                    if self.pushed
                    else None,
                    "repo_created": self.repo_created,
                    "branch_created": self.branch_created,
                }
            )
        return doc


def local_checkpoint_dir(name: str | os.PathLike[str]) -> Path:
    """CHECKPOINT of a push: a local directory (it is uploaded as it is), never a Hub id or a built-in.

    Raises:
        InputError: a Hub id, a built-in, or a path that does not exist.
    """
    text = str(name)
    kind, where = locate(text)
    if kind == "hub":
        raise InputError(
            f"{text}: no such directory; push publishes a local checkpoint directory. To republish the Hub "
            f"repo {text!r}, download it first (`hf download {text} --local-dir DIR`) and push DIR."
        )
    if kind == "builtin":
        raise InputError(
            f"{text}: a built-in model is not a checkpoint to publish; make one first "
            f"(`vhtool init {text} -o DIR`) and push DIR."
        )
    return Path(where)


def push_checkpoint(
    checkpoint: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    allow_pickle: bool = False,
) -> PushResult:
    """Verifies ``checkpoint`` and publishes it to ``repo_id`` in one commit (or only plans it, ``dry_run``).

    Args:
        checkpoint: the local checkpoint directory (never modified).
        repo_id: ``namespace/name`` of the model repo; created when missing.
        private: create the repo private (an existing repo's visibility is left as it is).
        revision: the branch to push to (created from the default branch when missing); default ``main``.
        commit_message: the commit title (default: "Upload <name> with vhtool <version>").
        create_pr: open a pull request instead of committing to the branch.
        dry_run: compute the plan only: no repo, branch, upload or commit is created.
        token: a Hub token; default ``HF_TOKEN`` or the login cache. Never printed or written.
        allow_pickle: read a PEFT folder's pickled value head (TRL's ``pytorch_model.bin``, ``weights_only=True``);
            it is published as ``model.safetensors``, never as a pickle.

    A checkpoint without ``vhtool.json`` (saved by ``save_pretrained`` after training, or a PEFT policy folder)
    is published with a generated one, in the same commit; nothing is written into ``checkpoint``.

    Returns:
        The plan, and for a real push the commit (``pushed`` False when the remote was up to date).

    Raises:
        InputError: not a checkpoint, or an invalid repo id (exit 2).
        VerificationError: the checkpoint fails verification (exit 1).
        OperationError: no token, a rejected token, or the Hub failed (exit 1); nothing is reported as pushed.
    """
    root = local_checkpoint_dir(checkpoint)
    validate_repo_id(repo_id)
    branch = revision or "main"
    if revision is not None and not revision.strip():
        raise InputError("--revision is empty; give a branch name (e.g. main or dev).")
    notes: list[str] = []
    manifest: Manifest
    own_manifest: Path | None = None
    config: dict[str, Any]
    if is_peft_folder(root):
        folder = verify_peft_for_push(root, allow_pickle=allow_pickle)
        local_files, skipped, manifest = collect_peft_files(folder, allow_pickle=allow_pickle)
        config = {}
        notes.append(f"a PEFT policy folder without {MANIFEST_FILE}: a generated one is pushed with it")
    else:
        ckpt = verify_for_push(root)
        local_files, skipped = collect_files(ckpt)
        config = ckpt.config
        if ckpt.manifest is None:
            manifest = generated_manifest(ckpt, local_files)
            notes.append(f"no {MANIFEST_FILE} in the checkpoint: a generated one is pushed with it (folder unchanged)")
        else:
            manifest, own_manifest = ckpt.manifest, root / MANIFEST_FILE
    tok = resolve_token(token)
    if tok is None and not dry_run:
        raise OperationError(f"no Hugging Face token found; {TOKEN_HELP}.")
    auth: str | bool = tok if tok else False

    remote, siblings = read_remote_state(repo_id, branch, token=auth, strict=not dry_run)
    if dry_run and tok is None:
        read = "the remote was read anonymously" if remote.checked else "the remote was not read"
        notes.append(f"no token found: {read}; a push needs one ({TOKEN_HELP})")

    card_origin = "checkpoint" if any(f.path_in_repo == CARD_FILE for f in local_files) else "generated"
    if card_origin == "generated":
        text = render_model_card(repo_id, manifest, config).encode("utf-8")
        remote_card = siblings.get(CARD_FILE)
        keep_remote = False
        if remote_card is not None and remote_card.blob_id != git_blob_sha1_bytes(text):
            remote_text = read_remote_text(repo_id, CARD_FILE, revision=remote.head, token=auth)
            # unreadable: keep it rather than overwrite a card we cannot see
            keep_remote = remote_text is None or CARD_MARKER not in remote_text
        if keep_remote:
            card_origin = "remote-kept"
            notes.append(f"{repo_id} already has a {CARD_FILE} not written by vhtool; it was left as it is")
        else:
            local_files.append(LocalFile(CARD_FILE, None, len(text), hashlib.sha256(text).hexdigest(), content=text))
    manifest_file = published_manifest(manifest, local_files, local=own_manifest)
    local_files.append(manifest_file)

    planned = [
        PlannedFile(
            path_in_repo=f.path_in_repo,
            size=f.size,
            sha256=f.sha256,
            status=file_status(
                size=f.size, sha256=f.sha256, local=f.local, content=f.content, remote=siblings.get(f.path_in_repo)
            ),
            origin="generated" if f.local is None else "checkpoint",
            local=f.local,
            content=f.content,
        )
        for f in local_files
    ]
    kept = {f.path_in_repo for f in planned} | ({CARD_FILE} if card_origin == "remote-kept" else set())
    for path in _deletions(repo_id, remote, siblings, kept, auth=auth, published=manifest_file):
        sib = siblings[path]
        planned.append(PlannedFile(path, sib.size or 0, sib.lfs_sha256 or "", "deleted", "remote"))
    if not remote.checked:  # only a dry run gets here: every file would be sent, but nothing was compared
        planned = [dataclasses.replace(f, status=NOT_CHECKED) for f in planned if f.status != "deleted"]

    result = PushResult(
        checkpoint=Path(checkpoint),
        repo_id=repo_id,
        revision=branch,
        endpoint=endpoint(auth),
        dry_run=dry_run,
        remote=remote,
        files=planned,
        skipped=skipped,
        model_card=card_origin,
        notes=notes,
    )
    if dry_run:
        return result
    if remote.exists and result.nothing_to_push:
        if private:
            notes.append(f"{repo_id} exists; its visibility was not changed")
        notes.append("nothing to push, remote is up to date")
        return result
    if remote.exists and private:
        notes.append(f"{repo_id} exists; its visibility was not changed")

    uploads = [
        Upload(f.path_in_repo, local=f.local, content=f.content, delete=f.status == "deleted")
        for f in planned
        if f.status in ("added", "changed", "deleted")
    ]
    uploaded = sum(1 for f in planned if f.status in ("added", "changed"))
    outcome = commit_files(
        repo_id,
        uploads,
        branch=branch,
        token=auth,
        create_repo=not remote.exists,
        private=private,
        create_branch=branch != "main" and not remote.branch_exists,
        message=commit_message or f"Upload {root.resolve().name} with vhtool {__version__}",
        description=(
            f"Pushed by `vhtool push`: {uploaded} file(s) added or changed, "
            f"{len(result.paths('unchanged'))} unchanged, {len(result.paths('deleted'))} deleted."
        ),
        create_pr=create_pr,
        parent=remote.head if remote.exists else None,
    )
    pushed = not (remote.head is not None and outcome.oid == remote.head)
    if not pushed:
        notes.append("nothing to push, remote is up to date")
    return dataclasses.replace(
        result,
        pushed=pushed,
        commit_oid=outcome.oid if pushed else None,
        commit_url=outcome.url if pushed else None,
        pr_url=outcome.pr_url if pushed else None,
        repo_created=outcome.repo_created,
        branch_created=outcome.branch_created,
        notes=notes,
    )


def _deletions(
    repo_id: str,
    remote: RemoteState,
    siblings: dict[str, RemoteFile],
    kept: set[str],
    *,
    auth: str | bool,
    published: LocalFile,
) -> list[str]:
    """The remote files this push deletes: those the catalogue lets it (:func:`~catalogue.push_may_delete`).

    A remote file this push does not publish goes only when the remote ``vhtool.json`` lists it as published by an
    earlier vhtool push, or when it is the other half of a single-file/sharded switch (the remote single file when
    the checkpoint is sharded; the remote index and the shards that index names when it is a single file).
    Everything else on the remote (``consolidated.safetensors``, ``onnx/``, a user's files) stays. A remote
    ``vhtool.json`` or index that cannot be read or parsed counts as listing nothing: a file is kept, never lost.
    """
    gone = sorted(p for p in siblings if p not in kept)
    if not gone:
        return []
    local_sharded = INDEX_FILE in kept
    published_before = _remote_published(repo_id, remote, siblings, auth=auth, ours=published)
    remote_index: list[str] = []
    if not local_sharded and INDEX_FILE in siblings:
        remote_index = _remote_index_names(repo_id, remote, auth=auth)
    return [
        p
        for p in gone
        if push_may_delete(
            p, published_before=published_before, local_sharded=local_sharded, remote_index_names=remote_index
        )
    ]


def _remote_published(
    repo_id: str, remote: RemoteState, siblings: dict[str, RemoteFile], *, auth: str | bool, ours: LocalFile
) -> tuple[str, ...] | None:
    """The ``published`` list of the remote ``vhtool.json``; None when it has none or cannot be read."""
    sib = siblings.get(MANIFEST_FILE)
    if sib is None:
        return None
    if ours.content is not None and sib.blob_id == git_blob_sha1_bytes(ours.content):
        text: str | None = ours.content.decode("utf-8")  # the same bytes as ours: no need to download it
    else:
        text = read_remote_text(repo_id, MANIFEST_FILE, revision=remote.head, token=auth)
    try:
        return Manifest.from_json(json.loads(text)).published if text is not None else None
    except (ValueError, CheckpointError):
        return None


def _remote_index_names(repo_id: str, remote: RemoteState, *, auth: str | bool) -> list[str]:
    """The files the remote ``model.safetensors.index.json`` names (empty when it cannot be read or parsed)."""
    text = read_remote_text(repo_id, INDEX_FILE, revision=remote.head, token=auth)
    try:
        weight_map = json.loads(text).get("weight_map") if text is not None else None
    except (ValueError, AttributeError):
        return []
    return sorted({v for v in weight_map.values() if isinstance(v, str)}) if isinstance(weight_map, dict) else []


__all__ = ["NOT_CHECKED", "PlannedFile", "PushResult", "local_checkpoint_dir", "push_checkpoint"]
