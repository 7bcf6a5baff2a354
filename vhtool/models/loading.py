"""Finding a model and its value-head weights: one resolver for local paths, Hub ids and built-ins.

A path that exists locally is never sent to the Hub. Value-head tensors are read selectively: from
a sharded checkpoint only the shard(s) the index names for ``v_head.*`` are opened, and only those
tensors are read from them.

What transformers reports about the backbone's load (tensors missing from the checkpoint, tensors it has
no place for) becomes one :class:`LoadReport`, less the value head's own keys; :func:`require_complete` is
the one check every command that loads a model makes of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.checkpoint.catalogue import (
    ADAPTER_CONFIG,
    INDEX_FILE,
    MANIFEST_FILE,
    PICKLE_FILE,
    SIDECAR_FILE,
    SINGLE_FILE,
)
from vhtool.checkpoint.layout import conflicting_weight_files, read_local_manifest, safe_member
from vhtool.checkpoint.manifest import Manifest, RewardAdapterInfo, read_manifest, symlinked_files
from vhtool.checkpoint.safetensors_io import read_header
from vhtool.errors import CheckpointError, InputError, VerificationError
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


# ---------------------------------------------------------------------------------------------- the load report
#: Keys of a checkpoint that are vhtool's (and TRL's) own, stored among the model's tensors: transformers
#: reports them as unexpected in the bare model, which they are not.
OWN_KEY_PREFIXES = ("v_head.",)
#: How many keys a one-line message names before it says how many more there are.
KEYS_NAMED = 3


def name_keys(keys: Iterable[str], limit: int = KEYS_NAMED) -> str:
    """The first ``limit`` keys (sorted), then how many more: ``a, b, c and 7 more``."""
    ordered = sorted(keys)
    shown = ", ".join(ordered[:limit])
    rest = len(ordered) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class LoadReport:
    """What transformers reported about loading the backbone, less the value head's own keys.

    Tied weights that a checkpoint legitimately omits (an LM head tied to the embedding) are never missing:
    transformers itself takes them out of its report.

    Attributes:
        missing: backbone tensors the architecture needs and the checkpoint lacks; transformers initialised
            them at random.
        unexpected: tensors of the checkpoint that the architecture has no place for (``v_head.*`` excluded).
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()

    @classmethod
    def from_loading_info(cls, info: Mapping[str, Any], model: Any = None) -> LoadReport:
        """The report of transformers' ``output_loading_info`` dict (``missing_keys``, ``unexpected_keys``).

        Args:
            info: what ``from_pretrained(..., output_loading_info=True)`` returned beside the model.
            model: the loaded model: the keys its class tells transformers to ignore are left out too.
                transformers 5.0 returns the keys before it applies those rules (later releases after),
                so applying them here gives the same report on every release.
        """
        missing = {str(k) for k in info.get("missing_keys") or ()}
        unexpected = {str(k) for k in info.get("unexpected_keys") or () if not str(k).startswith(OWN_KEY_PREFIXES)}
        if model is not None:
            missing = {k for k in missing if not _ignored(k, getattr(model, "_keys_to_ignore_on_load_missing", None))}
            unexpected = {k for k in unexpected if not _ignored(k, _ignored_unexpected(model))}
        return cls(missing=tuple(sorted(missing)), unexpected=tuple(sorted(unexpected)))

    @property
    def complete(self) -> bool:
        """True when every backbone tensor came from the checkpoint and every checkpoint tensor was used."""
        return not (self.missing or self.unexpected)

    def describe(self) -> str:
        """One line naming the first few keys of each kind and their count; empty when complete."""
        parts = []
        if self.missing:
            parts.append(
                f"{_plural(len(self.missing), 'backbone tensor')} missing from the checkpoint (initialised at "
                f"random): {name_keys(self.missing)}"
            )
        if self.unexpected:
            parts.append(
                f"{_plural(len(self.unexpected), 'tensor')} of the checkpoint unused by the architecture: "
                f"{name_keys(self.unexpected)}"
            )
        return "; ".join(parts)


def _ignored(key: str, patterns: Iterable[str] | None) -> bool:
    return any(re.search(pattern, key) for pattern in patterns or ())


def _ignored_unexpected(model: Any) -> list[str]:
    """The unexpected-key patterns transformers ignores for ``model``: its class's, and buffers older
    checkpoints stored (``rotary_emb.inv_freq``, ``position_ids``) that are no longer saved."""
    patterns = list(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    buffers = [name for name, _ in model.named_buffers()] if hasattr(model, "named_buffers") else []
    if any(name.endswith("rotary_emb.inv_freq") for name in buffers):
        patterns.append(r"rotary_emb\.inv_freq")
    if any(name.endswith("position_ids") for name in buffers):
        patterns.append(r"(^|\.)position_ids$")
    return patterns


def require_complete(report: LoadReport | None, checkpoint: str | None, *, allow_missing: bool = False) -> None:
    """The one check of a loaded backbone that the commands make (``score``, ``verify --forward``).

    Args:
        report: the wrapper's ``load_report`` (``None``: nothing was loaded from files, nothing to check).
        checkpoint: how the user named the checkpoint, for the message (``None``: the caller's message names it).
        allow_missing: accept an incomplete load (``--allow-missing``): the Python API's warning still says it.

    Raises:
        VerificationError: tensors were missing or unexpected and ``allow_missing`` is false (exit 1).
    """
    if report is None or report.complete or allow_missing:
        return
    problems = []
    if report.missing:
        problems.append("missing tensors")
    if report.unexpected:
        problems.append("unexpected tensors")
    where = f"{checkpoint}: " if checkpoint is not None else ""
    message = f"{where}{report.describe()}. Pass --allow-missing to use it anyway."
    raise VerificationError(message, problems=problems)


class _DropLoadReport(logging.Filter):
    """Drops transformers' LOAD REPORT table when all it lists is missing or unexpected keys.

    Those the wrapper reports itself, in one warning, without the ``v_head.*`` lines (which are no problem).
    A table with size mismatches or conversion errors passes: transformers raises right after it, and the
    table is the detail of that error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        return "MISMATCH" in message or "CONVERSION" in message


#: The logger transformers writes its load report to.
_REPORT_LOGGER = "transformers.modeling_utils"


@contextmanager
def own_load_report() -> Iterator[None]:
    """While loading: transformers' load-report table is left to the wrapper; every other message still shows."""
    log = logging.getLogger(_REPORT_LOGGER)
    drop = _DropLoadReport()
    log.addFilter(drop)
    bars = _loading_bar_off()
    try:
        yield
    finally:
        log.removeFilter(drop)
        if bars is not None:
            bars()


def _loading_bar_off() -> Any:
    """Turns transformers' "Loading weights" bar off for one load; returns the undo (``None``: nothing done).

    A library's load prints nothing but real problems (which warn). The bar shows when the user asked for the
    libraries' output: ``VHTOOL_DEBUG`` or their own ``TRANSFORMERS_VERBOSITY``.
    """
    if os.environ.get("VHTOOL_DEBUG", "") not in ("", "0", "false") or "TRANSFORMERS_VERBOSITY" in os.environ:
        return None
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        return None
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    return hf_logging.enable_progress_bar
