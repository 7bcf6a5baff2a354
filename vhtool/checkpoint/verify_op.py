"""``vhtool verify``: the integrity of a checkpoint, checked from its files.

Every check becomes a :class:`Check` (name, ok, detail); a malformed file is a failed check, never an
exception, so one run lists everything that is wrong. Only a path that is not a checkpoint at all
(missing, not a directory, no ``config.json``) raises :class:`~vhtool.errors.InputError` (exit 2).
Nothing here imports torch: ``verify --forward`` (one tiny batch through the model) lives in the torch world,
``models/smoke.py``, which adds its checks to a :class:`VerifyResult` (see :meth:`VerifyResult.with_checks`);
the CLI composes the two.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vhtool.checkpoint.catalogue import CONFIG_FILE, is_weight_file
from vhtool.checkpoint.conventions import VHEAD_BIAS, VHEAD_WEIGHT, find_heads
from vhtool.checkpoint.copyio import hash_file
from vhtool.checkpoint.layout import (
    MANIFEST_FILE,
    Checkpoint,
    hidden_size,
    open_checkpoint,
    read_json_object,
    safe_member,
)
from vhtool.checkpoint.manifest import FORMAT, FileEntry, Manifest, RewardAdapterInfo, read_manifest, symlinked_files
from vhtool.checkpoint.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from vhtool.checkpoint.safetensors_io import (
    FLOAT_DTYPES,
    read_header,
    read_tensor_values,
)
from vhtool.checkpoint.unmanaged import PeftFolder, is_peft_folder, non_finite, open_peft_folder, read_peft_head
from vhtool.errors import InputError, VhtoolError


@dataclass(frozen=True)
class Check:
    """One verification: what was checked, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class VerifyResult:
    """All checks run on one checkpoint; ``ok`` when every one passed."""

    path: Path
    ok: bool
    checks: list[Check]
    forward: bool = False
    hashed: bool = False
    notes: list[str] = field(default_factory=list)
    #: ``checkpoint`` (config.json and weights) or ``peft-folder`` (a PEFT policy's save_pretrained).
    kind: str = "checkpoint"
    #: What the file checks read (``{}`` when unreadable), for checks that build on them; not in :meth:`to_json`.
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    manifest: Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def with_checks(self, checks: Sequence[Check], *, forward: bool | None = None) -> VerifyResult:
        """This result with ``checks`` appended (``ok`` recomputed), e.g. the forward checks of ``verify --forward``.

        Args:
            checks: the checks to add, after the file checks.
            forward: set the ``forward`` flag (``None``: keep it).
        """
        merged = [*self.checks, *checks]
        return replace(
            self,
            checks=merged,
            ok=all(c.ok for c in merged),
            forward=self.forward if forward is None else forward,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
            "failures": [c.name for c in self.failures],
            "forward": self.forward,
            "hashed": self.hashed,
            "notes": list(self.notes),
            "kind": self.kind,
            "manifest": self.manifest is not None,
        }


def verify_checkpoint(
    path: str | os.PathLike[str], *, hash_all: bool = False, allow_pickle: bool = False
) -> VerifyResult:
    """Checks a checkpoint directory against its ``vhtool.json`` and its own index and headers.

    A checkpoint saved without a ``vhtool.json`` (``save_pretrained`` of vhtool's or TRL's classes after
    training, single-file or sharded) is checked from its files alone: the ``manifest`` check passes with
    "none" and a note lists what could not be checked. So is a PEFT policy folder (``adapter_config.json``,
    no ``config.json``; see :mod:`vhtool.checkpoint.unmanaged`).

    The forward checks of ``verify --forward`` live in the torch world (``models/smoke.py``) and are added to
    this result by the CLI.

    Args:
        path: the checkpoint directory.
        hash_all: also hash weight files recorded without a sha256 (linked files).
        allow_pickle: read a PEFT folder's pickled value head (TRL's ``pytorch_model.bin``) with
            ``weights_only=True``; without it that head is a failed check naming the flag.

    Returns:
        The checks; ``ok`` is true when all passed.

    Raises:
        InputError: ``path`` is missing, not a directory, or has no ``config.json`` (not a checkpoint at all).
    """
    root = Path(path)
    if not root.exists() and not root.is_symlink():
        raise InputError(f"{root}: no such file or directory.")
    if not root.is_dir():
        raise InputError(f"{root}: not a checkpoint directory (expected a folder with config.json and weights).")
    if is_peft_folder(root):
        return _verify_peft_folder(root, allow_pickle=allow_pickle)
    if not (root / CONFIG_FILE).is_file():
        raise InputError(f"{root}: not a checkpoint (no config.json).")

    checks: list[Check] = []
    notes: list[str] = []
    config, hidden = _run(checks, "config", lambda: _check_config(root))
    manifest: Manifest | None = _run(checks, "manifest", lambda: _check_manifest(root))[0]
    ckpt = _run(checks, "layout", lambda: _check_layout(root, manifest))[0]
    if ckpt is not None and ckpt.ignored_weights:
        checks.append(_stale_weights_check(ckpt.ignored_weights))
    _run(checks, "links", lambda: _check_links(root, manifest))
    if manifest is not None:
        checks.extend(_check_files(root, manifest, ckpt, hash_all=hash_all))
    role = manifest.role if manifest is not None else None
    vh_entry = manifest.value_head if manifest is not None else None
    convention = vh_entry.convention if vh_entry is not None else None
    if manifest is None and _is_classifier_config(config or {}):
        convention = "seq-cls"  # a critic saved by transformers: its head is score.weight (or classifier.weight)
    _run(checks, "value_head", lambda: _check_value_head(ckpt, hidden, role=role, convention=convention))
    if manifest is not None and manifest.reward_adapter is not None:
        checks.extend(_check_reward_adapter(root, manifest.reward_adapter, hidden, hash_all=hash_all))
    if manifest is None and not (root / MANIFEST_FILE).is_file():
        notes.extend(_unmanaged_notes(root, ckpt))
    if hash_all:
        notes.append("every weight file was hashed")
    return VerifyResult(
        path=root,
        ok=all(c.ok for c in checks),
        checks=checks,
        hashed=hash_all,
        notes=notes,
        config=config or {},
        manifest=manifest,
    )


#: The ``manifest`` check of a checkpoint saved without one (passes: nothing recorded, nothing contradicted).
NO_MANIFEST = f"none: no {MANIFEST_FILE} (saved by save_pretrained?); files not checked against recorded hashes"


def _is_classifier_config(config: dict[str, Any]) -> bool:
    archs = config.get("architectures")
    return (
        isinstance(archs, list)
        and bool(archs)
        and all(
            isinstance(a, str) and a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in archs
        )
    )


def _unmanaged_notes(root: Path, ckpt: Checkpoint | None) -> list[str]:
    """What ``verify`` could not check without a manifest, and the command that adopts the checkpoint."""
    notes = [
        f"no {MANIFEST_FILE}: not checked: weight files against recorded sizes and sha256, the role, how the value "
        "head was made; checked: config, layout, headers, value head shape and finiteness"
    ]
    if ckpt is not None:
        conv = next((h.convention for h in find_heads(ckpt)), None)
        target = {"vhtool": "vhtool", "sidecar": "sidecar"}.get(conv or "")
        if target is not None:
            notes.append(f"`{adopt_command(root, target)}` adopts it: a copy with a {MANIFEST_FILE}, head kept as is")
    return notes


def adopt_command(src: Path, target: str = "vhtool") -> str:
    """The command that adopts ``src`` (a value-head checkpoint saved without a manifest) into ``<src>-vhtool``."""
    out = Path(f"{src}".rstrip("/") + "-vhtool")
    return f"vhtool convert {shlex.quote(str(src))} --to {target} -o {shlex.quote(str(out))}"


def _verify_peft_folder(root: Path, *, allow_pickle: bool) -> VerifyResult:
    """The checks of a PEFT policy folder: adapter config and weights, value head shape and finiteness."""
    checks: list[Check] = []
    folder = _run(checks, "adapter", lambda: _check_peft_adapter(root))[0]
    checks.append(Check("manifest", True, f"{NO_MANIFEST} (a PEFT policy folder)"))
    _run(checks, "links", lambda: _check_links(root, None))
    if folder is None:
        checks.append(Check("value_head", False, "not checked: the adapter folder is invalid (see 'adapter')."))
    else:
        _run(checks, "value_head", lambda: _check_peft_head(folder, allow_pickle=allow_pickle))
    notes = [
        f"a PEFT policy folder without {MANIFEST_FILE}: not checked: files against recorded hashes, the base "
        "model's weights (not in the folder)"
    ]
    return VerifyResult(path=root, ok=all(c.ok for c in checks), checks=checks, notes=notes, kind="peft-folder")


def _check_peft_adapter(root: Path) -> tuple[PeftFolder, str]:
    folder = open_peft_folder(root)
    peft_type = folder.adapter_config.get("peft_type")
    if not isinstance(peft_type, str):
        raise _SkipCheck(f"{ADAPTER_CONFIG} has no peft_type; not a PEFT adapter.")
    if folder.adapter_weights is None:
        raise _SkipCheck(f"no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}.")
    if folder.adapter_weights != ADAPTER_WEIGHTS:
        raise _SkipCheck(
            f"the adapter weights are a pickle ({folder.adapter_weights}); save with safe_serialization=True."
        )
    header = read_header(root / ADAPTER_WEIGHTS)
    base = folder.base_model or "?"
    return folder, f"{peft_type} on {base}, {len(header.tensors)} tensors in {ADAPTER_WEIGHTS}"


def _check_peft_head(folder: PeftFolder, *, allow_pickle: bool) -> tuple[str]:
    head = read_peft_head(folder, allow_pickle=allow_pickle)
    hidden = folder.base_hidden_size()
    shape = head.weight_shape
    if len(shape) != 2 or shape[0] != 1 or (hidden is not None and shape != (1, hidden)):
        raise _SkipCheck(f"{VHEAD_WEIGHT} has shape {list(shape)}, expected [1, {hidden or 'hidden'}].")
    if head.bias_shape is None:
        raise _SkipCheck(f"{VHEAD_BIAS} is missing from {head.file}.")
    if head.bias_shape != (1,):
        raise _SkipCheck(f"{VHEAD_BIAS} has shape {list(head.bias_shape)}, expected [1].")
    bad = non_finite(head)
    if bad:
        raise _SkipCheck("; ".join(bad) + ".")
    checked = "" if hidden is not None else " (hidden size not checked: the base model is not on this machine)"
    return (f"{list(shape)} {head.dtype} in {head.file}, finite{checked}",)


def _run(checks: list[Check], name: str, fn: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """Runs one check: ``fn`` returns ``(*values, detail)``; an error becomes a failed check and ``None`` values."""
    try:
        *values, detail = fn()
    except _SkipCheck as exc:
        checks.append(Check(name, exc.ok, str(exc)))
        return (None, None)
    except VhtoolError as exc:
        checks.append(Check(name, False, str(exc)))
        return (None, None)
    except (OSError, ValueError, TypeError, KeyError, RecursionError, OverflowError, MemoryError) as exc:
        checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
        return (None, None)
    checks.append(Check(name, True, str(detail)))
    return (*values, None) if len(values) == 1 else tuple(values)


class _SkipCheck(Exception):
    """A check that could not run (``ok=False``) or does not apply (``ok=True``)."""

    def __init__(self, message: str, *, ok: bool = False) -> None:
        super().__init__(message)
        self.ok = ok


def _check_config(root: Path) -> tuple[dict[str, Any], int, str]:
    safe_member(root, CONFIG_FILE, CONFIG_FILE)
    config = read_json_object(root / CONFIG_FILE, CONFIG_FILE)
    hidden = hidden_size(config)
    kind = config.get("model_type", "?")
    return config, hidden, f"model_type {kind!s}, hidden size {hidden}"


def _check_manifest(root: Path) -> tuple[Manifest, str]:
    if not (root / MANIFEST_FILE).is_file():
        raise _SkipCheck(NO_MANIFEST, ok=True)
    manifest = read_manifest(safe_member(root, MANIFEST_FILE, MANIFEST_FILE))
    if manifest.format != FORMAT:
        raise _SkipCheck(f"{MANIFEST_FILE}: format is {manifest.format!r}, expected {FORMAT!r}.")
    if not manifest.files:
        raise _SkipCheck(f"{MANIFEST_FILE}: no 'files' section recording the weight files.")
    return manifest, f"role {manifest.role!s}, {len(manifest.files)} weight file(s) recorded"


def _check_layout(root: Path, manifest: Manifest | None) -> tuple[Checkpoint, str]:
    # the manifest as the 'manifest' check read it: a malformed one fails there, not here too
    ckpt = open_checkpoint(root, manifest=manifest)
    kind = f"sharded ({len(ckpt.weight_files)} files)" if ckpt.sharded else "single file"
    return ckpt, f"{kind}, {len(ckpt.tensors)} tensors, index and headers consistent"


def _stale_weights_check(ignored: tuple[str, ...]) -> Check:
    return Check(
        "stale weights",
        False,
        f"model.safetensors sits beside {', '.join(ignored)}: transformers, TRL and vhtool load model.safetensors "
        "and ignore the others (left by a save into an older sharded checkpoint); delete "
        f"{' and '.join(ignored)} once you are sure model.safetensors holds the weights you want.",
    )


def _check_links(root: Path, manifest: Manifest | None) -> tuple[str]:
    """Every symlink in the tree stays inside it, except weight files recorded as placed by ``--link symlink``."""
    linked = symlinked_files(manifest)
    n_links = 0
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            n_links += 1
            rel = str(p.relative_to(root))
            try:
                safe_member(root, rel, "a file", allow_link_out=rel in linked)
            except VhtoolError:
                bad.append(f"{rel} (-> {os.readlink(p)})")
    if bad:
        raise _SkipCheck(f"{', '.join(bad)}: points outside the checkpoint (links are never followed or uploaded).")
    return (f"{n_links} link(s), all recorded or inside the checkpoint" if n_links else "no symlinks",)


def _check_one_file(root: Path, name: str, entry: FileEntry, *, hash_all: bool) -> Check:
    label = f"file {name}"
    size, sha, how = entry.size, entry.sha256, entry.how
    try:
        member = safe_member(root, name, MANIFEST_FILE, allow_link_out=how == "symlink")
    except VhtoolError as exc:
        return Check(label, False, str(exc))
    if not member.is_file():
        what = "its link target is gone" if member.is_symlink() else "missing from the checkpoint"
        return Check(label, False, f"recorded in {MANIFEST_FILE} but {what}.")
    actual = member.stat().st_size
    if actual != size:
        return Check(label, False, f"size {actual} bytes, {MANIFEST_FILE} records {size} (truncated or replaced).")
    if sha is None:
        if not hash_all:
            return Check(label, True, f"{size} bytes; {how or 'linked'}, no sha256 recorded (--hash checks content)")
        digest = hash_file(member)
        return Check(label, True, f"{size} bytes; no sha256 recorded, hashed now: {digest[:12]}…")
    digest = hash_file(member)
    if digest != sha:
        return Check(label, False, f"sha256 {digest[:12]}… differs from the recorded {sha[:12]}… (content changed).")
    return Check(label, True, f"{size} bytes, sha256 matches")


def _check_files(root: Path, manifest: Manifest, ckpt: Checkpoint | None, *, hash_all: bool) -> list[Check]:
    files = manifest.files
    checks = []
    for name, entry in sorted(files.items()):
        try:
            checks.append(_check_one_file(root, name, entry, hash_all=hash_all))
        except (OSError, VhtoolError) as exc:
            checks.append(Check(f"file {name}", False, f"cannot read: {exc}"))
    # Each weight file present at the top level (any format) must be recorded in vhtool.json.
    present = {p.name for p in root.iterdir() if is_weight_file(p.name)}
    if ckpt is not None:
        present |= set(ckpt.weight_files)
    unlisted = sorted(present - set(files))
    if unlisted:
        checks.append(
            Check(
                "unlisted files",
                False,
                f"weight file(s) not recorded in {MANIFEST_FILE}: {', '.join(unlisted)} (added or left over).",
            )
        )
    else:
        checks.append(Check("unlisted files", True, "every weight file present is recorded"))
    return checks


def _check_value_head(
    ckpt: Checkpoint | None, hidden: int | None, *, role: object, convention: object = None
) -> tuple[str]:
    if ckpt is None:
        raise _SkipCheck("not checked: the layout is invalid (see 'layout').")
    # `vhtool convert --to seq-cls|token-cls` records its head convention: a classifier head, bias optional.
    classifier = convention in ("seq-cls", "token-cls")
    wanted = ("score", "value_head", "classifier") if classifier else ("vhtool", "sidecar")
    heads = [h for h in find_heads(ckpt) if h.convention in wanted]
    if not heads:
        if role == "reference":
            raise _SkipCheck("none (a reference checkpoint needs no value head)", ok=True)
        others = [h for h in find_heads(ckpt) if h.convention not in wanted]
        if others:
            raise _SkipCheck(
                f"no value head ({VHEAD_WEIGHT}); it holds a {others[0].description}, and config.json does not say "
                "it is a classifier (architectures ...ForSequenceClassification)."
            )
        init = f"vhtool init {shlex.quote(str(ckpt.path))} -o {shlex.quote(str(ckpt.path) + '-value-head')}"
        raise _SkipCheck(f"no value head ({VHEAD_WEIGHT}) in the checkpoint; `{init}` adds one.")
    if len(heads) > 1:
        raise _SkipCheck("two value heads (inline and in value_head.safetensors); keep one.")
    head = heads[0]
    if hidden is None:
        raise _SkipCheck("not checked: config.json has no usable hidden size (see 'config').")
    if head.shape != (1, hidden):
        raise _SkipCheck(f"{head.weight} has shape {list(head.shape)}, expected [1, {hidden}].")
    if head.bias is None and not classifier:
        raise _SkipCheck(f"{VHEAD_BIAS} is missing.")
    if head.bias is not None and head.bias_shape != (1,):
        raise _SkipCheck(f"{head.bias} has shape {list(head.bias_shape or ())}, expected [1].")
    header = ckpt.sidecar if head.convention == "sidecar" else ckpt.headers[head.file]
    assert header is not None
    bad = []
    for tname in (head.weight, *([head.bias] if head.bias else [])):
        values = read_tensor_values(header, header.tensors[tname])
        n_bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if n_bad:
            bad.append(f"{tname} has {n_bad} NaN/inf value(s)")
    if bad:
        reinit = (
            f"vhtool init {shlex.quote(str(ckpt.path))} --reinit-head -o {shlex.quote(str(ckpt.path) + '-reinit')}"
        )
        raise _SkipCheck("; ".join(bad) + f" (a fresh head: `{reinit}`).")
    return (f"[1, {hidden}] {head.dtype} in {head.file}, finite",)


def _check_reward_adapter(root: Path, entry: RewardAdapterInfo, hidden: int | None, *, hash_all: bool) -> list[Check]:
    checks: list[Check] = []
    _run(checks, "reward_adapter", lambda: _check_adapter_dir(root, entry, hidden))
    files, subfolder = entry.files, entry.subfolder
    if files is None:
        return checks
    items = list(files.items()) if entry.files_listed else sorted(files.items())
    for name, rec in items:
        rel = name
        if subfolder is not None and not name.startswith(subfolder.rstrip("/") + "/"):
            rel = f"{subfolder.rstrip('/')}/{name}"
        if rec is None:  # a bare list of names: existence only
            try:
                ok = safe_member(root, rel, "reward_adapter").is_file()
            except VhtoolError as exc:
                checks.append(Check(f"file {rel}", False, str(exc)))
                continue
            checks.append(Check(f"file {rel}", ok, "present" if ok else "recorded but missing"))
            continue
        try:
            checks.append(_check_one_file(root, rel, rec, hash_all=hash_all))
        except (OSError, VhtoolError) as exc:
            checks.append(Check(f"file {rel}", False, f"cannot read: {exc}"))
    return checks


def _check_adapter_dir(root: Path, entry: RewardAdapterInfo, hidden: int | None) -> tuple[str]:
    name, sub = entry.name, entry.subfolder
    if not name:
        raise _SkipCheck(f"{MANIFEST_FILE}: reward_adapter.name is missing.")
    if not sub:
        raise _SkipCheck(f"{MANIFEST_FILE}: reward_adapter.subfolder is missing.")
    folder = safe_member(root, sub.rstrip("/"), "reward_adapter.subfolder")
    if not folder.is_dir():
        raise _SkipCheck(f"the reward adapter folder {sub!r} is missing.")
    cfg = read_json_object(
        safe_member(root, f"{sub.rstrip('/')}/{ADAPTER_CONFIG}", "the reward adapter"), ADAPTER_CONFIG
    )
    if not isinstance(cfg.get("peft_type"), str):
        raise _SkipCheck(f"{sub}/{ADAPTER_CONFIG} has no peft_type; not a PEFT adapter.")
    weights = safe_member(root, f"{sub.rstrip('/')}/{ADAPTER_WEIGHTS}", "the reward adapter")
    if not weights.is_file():
        raise _SkipCheck(f"{sub}/{ADAPTER_WEIGHTS} is missing.")
    header = read_header(weights)
    scores = [t for n, t in header.tensors.items() if n.endswith("score.weight")]
    if not scores:
        raise _SkipCheck(f"{sub}/{ADAPTER_WEIGHTS} has no score head (score.weight); a reward adapter needs one.")
    shape = scores[0].shape
    if hidden is not None and shape != (1, hidden):
        raise _SkipCheck(f"the adapter's score head has shape {list(shape)}, expected [1, {hidden}].")
    if scores[0].dtype in FLOAT_DTYPES:
        values = read_tensor_values(header, scores[0])
        if not bool(np.isfinite(values).all()):
            raise _SkipCheck("the adapter's score head holds NaN/inf values.")
    return (f"{name!s} in {sub}/ ({cfg['peft_type']}), score head {list(shape)}",)
