"""``vhtool inspect-layers``: what a checkpoint holds, from its safetensors headers only. No torch.

A checkpoint (a local directory, a ``builtin:`` model, or a Hub repo read through HTTP range
requests) is described by its config, ``vhtool.json`` and the headers of its weight files, its
``value_head.safetensors`` sidecar and its reward-adapter subfolder. Tensors are grouped the way a
reader thinks of a model: embeddings, one row per block, final norm, LM head, value head, reward
adapter, other. Nothing here reads tensor data, except :func:`diff_checkpoints` with ``hash=True``,
which hashes byte ranges shard by shard in bounded memory.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.blocks import is_embedding_name
from vhtool.checkpoint.conventions import KNOWN_HEADS, find_heads
from vhtool.checkpoint.layout import (
    INDEX_FILE,
    MANIFEST_FILE,
    SIDECAR_FILE,
    SINGLE_FILE,
    Checkpoint,
    TensorLocation,
    hidden_size,
    open_checkpoint,
    read_json_object,
    safe_member,
)
from vhtool.checkpoint.safetensors_io import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    read_header,
)
from vhtool.errors import CheckpointError, HubUnavailableError, InputError

#: Version of the ``--json`` document (docs/inspect-schema.md). Bumped on any incompatible change.
SCHEMA_VERSION = 1

DEFAULT_ADAPTER_SUBFOLDER = "reward_model_adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

#: Group kinds in display order.
KINDS = ("embeddings", "block", "final_norm", "lm_head", "value_head", "reward_adapter", "other")

#: Parts of a checkpoint a tensor can come from.
PART_MODEL, PART_SIDECAR, PART_ADAPTER = "model", "sidecar", "reward_adapter"

_BLOCK_RE = re.compile(r"\.(\d+)(?=\.|$)")
_NORM_RE = re.compile(r"(^|\.)(norm|ln_f|final_layer_norm|final_layernorm|layer_norm|layernorm)\.")
_LM_HEAD_RE = re.compile(r"^(lm_head|embed_out|final_logits_bias)(\.|$)")
_LORA_RE = re.compile(r"(^|\.)lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")
_SCORE_RE = re.compile(r"(^|\.)(score|classifier)(\.modules_to_save(\.[^.]+)?)?\.(weight|bias)$")
_VALUE_HEAD_NAMES = frozenset(n for pair in KNOWN_HEADS.values() for n in pair if n)
_HASH_CHUNK = 1 << 20

ProgressFactory = Callable[[int], Callable[[int], None]]


# --------------------------------------------------------------------------------------------------- results


def _looked_for() -> str:
    return ", ".join(w for w, _ in KNOWN_HEADS.values()) + " and value_head.safetensors"


@dataclass(frozen=True)
class TensorRow:
    """One tensor as the inspection reports it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    params: int
    nbytes: int
    file: str
    part: str
    group: str
    marks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "params": self.params,
            "bytes": self.nbytes,
            "file": self.file,
            "part": self.part,
            "group": self.group,
            "marks": list(self.marks),
        }


@dataclass(frozen=True)
class GroupRow:
    """A row of the table: embeddings, one block, the final norm, the LM head, a head, the adapter, other."""

    id: str
    kind: str
    label: str
    container: str | None
    index: int | None
    tensors: int
    params: int
    nbytes: int
    dtypes: tuple[str, ...]
    marks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "container": self.container,
            "index": self.index,
            "tensors": self.tensors,
            "params": self.params,
            "bytes": self.nbytes,
            "dtypes": list(self.dtypes),
            "marks": list(self.marks),
        }


@dataclass(frozen=True)
class Totals:
    """Sums over the listed tensors, overall and per dtype."""

    tensors: int
    params: int
    nbytes: int
    by_dtype: dict[str, tuple[int, int, int]]  # dtype -> (tensors, params, bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "tensors": self.tensors,
            "params": self.params,
            "bytes": self.nbytes,
            "by_dtype": {d: {"tensors": t, "params": p, "bytes": b} for d, (t, p, b) in sorted(self.by_dtype.items())},
        }


@dataclass(frozen=True)
class ValueHeadReport:
    """Which value-head convention was found and whether the head is usable (``[1, hidden]``, a float dtype)."""

    heads: tuple[dict[str, Any], ...]
    hidden_size: int | None
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def found(self) -> bool:
        return bool(self.heads)

    @property
    def ok(self) -> bool:
        return self.found and not self.problems

    @property
    def convention(self) -> str | None:
        return self.heads[0]["convention"] if self.heads else None

    def summary(self) -> str:
        if not self.heads:
            return f"none found (looked for {_looked_for()})"
        h = self.heads[0]
        text = f"{h['description']}: {h['weight']} {h['shape']} {h['dtype']}"
        if h["bias"]:
            text += f" + {h['bias']} {h['bias_shape']} {h['bias_dtype']}"
        if len(self.heads) > 1:
            text += " (also: " + ", ".join(x["description"] for x in self.heads[1:]) + ")"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "convention": self.convention,
            "description": self.heads[0]["description"] if self.heads else None,
            "heads": list(self.heads),
            "hidden_size": self.hidden_size,
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class AdapterReport:
    """The reward adapter recorded in ``vhtool.json`` (or found in the default subfolder)."""

    name: str
    subfolder: str
    recorded: bool
    peft_type: str | None
    task_type: str | None
    r: int | None
    lora_alpha: float | None
    target_modules: tuple[str, ...] | str | None
    lora_tensors: int
    score: dict[str, Any] | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            return f"{self.name} ({self.subfolder}/): malformed: {'; '.join(self.problems)}"
        targets = ", ".join(self.target_modules) if isinstance(self.target_modules, tuple) else self.target_modules
        score = f"score {self.score['shape']} {self.score['dtype']}" if self.score else "no score head"
        return f"{self.name} ({self.subfolder}/): {self.peft_type} r={self.r} on {targets}, {score}"

    def to_json(self) -> dict[str, Any]:
        tm = list(self.target_modules) if isinstance(self.target_modules, tuple) else self.target_modules
        return {
            "name": self.name,
            "subfolder": self.subfolder,
            "recorded": self.recorded,
            "peft_type": self.peft_type,
            "task_type": self.task_type,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": tm,
            "lora_tensors": self.lora_tensors,
            "score": self.score,
            "ok": self.ok,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class SourceInfo:
    """Where an inspected checkpoint came from."""

    kind: str  # "local" | "builtin" | "hub"
    location: str
    revision: str | None = None
    commit: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "revision": self.revision, "commit": self.commit}


@dataclass(frozen=True)
class InspectResult:
    """Everything ``inspect-layers`` reports about one checkpoint (see docs/inspect-schema.md)."""

    source: SourceInfo
    model: dict[str, Any]
    role: str | None
    layout: str
    files: tuple[dict[str, Any], ...]
    filter: str | None
    containers: tuple[tuple[str, int], ...]
    groups: tuple[GroupRow, ...]
    tensors: tuple[TensorRow, ...]
    totals: Totals
    value_head: ValueHeadReport
    reward_adapter: AdapterReport | None
    reference: dict[str, Any] | None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "mode": "inspect",
            "source": self.source.to_json(),
            "model": self.model,
            "role": self.role,
            "layout": self.layout,
            "files": list(self.files),
            "filter": self.filter,
            "containers": [{"prefix": p, "num_blocks": n} for p, n in self.containers],
            "groups": [g.to_json() for g in self.groups],
            "tensors": [t.to_json() for t in self.tensors],
            "totals": self.totals.to_json(),
            "value_head": self.value_head.to_json(),
            "reward_adapter": self.reward_adapter.to_json() if self.reward_adapter else None,
            "reference": self.reference,
            "notes": list(self.notes),
        }

    def require_value_head(self) -> list[str]:
        """Problems that make ``--require-value-head`` fail (empty when the head is usable)."""
        if not self.value_head.found:
            return [
                f"no value head found (looked for {_looked_for()}); add one with `vhtool init`, or move a "
                "classifier head with `vhtool convert --to vhtool`"
            ]
        return list(self.value_head.problems)

    def require_reward_adapter(self) -> list[str]:
        """Problems that make ``--require-reward-adapter`` fail (empty when the adapter is well-formed)."""
        if self.reward_adapter is None:
            return [
                "no reward adapter: vhtool.json records none and there is no "
                f"{DEFAULT_ADAPTER_SUBFOLDER}/{ADAPTER_CONFIG} (add one with `vhtool attach-reward-adapter`)"
            ]
        return [f"reward adapter {self.reward_adapter.name!r}: {p}" for p in self.reward_adapter.problems]


@dataclass(frozen=True)
class DiffResult:
    """Tensors only in A, only in B, with another shape/dtype, and (with ``hash``) with other bytes."""

    a: SourceInfo
    b: SourceInfo
    filter: str | None
    compared: int
    only_in_a: tuple[dict[str, Any], ...]
    only_in_b: tuple[dict[str, Any], ...]
    changed: tuple[dict[str, Any], ...]
    hashed: bool
    bytes_differ: tuple[str, ...]
    hashed_bytes: int = 0

    @property
    def identical(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.changed or self.bytes_differ)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "mode": "diff",
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "filter": self.filter,
            "compared": self.compared,
            "only_in_a": list(self.only_in_a),
            "only_in_b": list(self.only_in_b),
            "changed": list(self.changed),
            "hashed": self.hashed,
            "hashed_bytes": self.hashed_bytes,
            "bytes_differ": list(self.bytes_differ) if self.hashed else None,
            "identical": self.identical,
        }


# --------------------------------------------------------------------------------------------------- loading


@dataclass
class _Tensor:
    """A tensor of any part, with what hashing needs when the source is local."""

    key: str  # unique across parts: the name for model tensors, "<file>:<name>" otherwise
    name: str
    info: TensorInfo
    file: str
    part: str
    abs_path: Path | None = None
    abs_offset: int = 0


@dataclass
class _Loaded:
    source: SourceInfo
    ckpt: Checkpoint
    layout: str
    tensors: list[_Tensor]
    adapter: AdapterReport | None
    notes: list[str] = field(default_factory=list)


def _load(
    source: str,
    *,
    revision: str | None,
    token: str | bool | None,
) -> _Loaded:
    """Resolves ``source`` (local path, ``builtin:``, Hub id) and reads its headers."""
    from vhtool.hub import locate

    kind, where = locate(source, revision=revision)
    if kind != "hub":  # an existing path is never sent to the Hub
        location = source if kind == "builtin" else str(where)
        return _load_local(where, SourceInfo(kind=kind, location=location))
    return _load_hub(source, revision=revision, token=token)


def _load_local(root: Path, info: SourceInfo) -> _Loaded:
    ckpt = open_checkpoint(root)
    tensors: list[_Tensor] = []
    for name, loc in ckpt.tensors.items():
        hdr = ckpt.headers[loc.file]
        tensors.append(
            _Tensor(
                name,
                name,
                loc.info,
                loc.file,
                PART_MODEL,
                abs_path=hdr.path,
                abs_offset=hdr.data_start + loc.info.begin,
            )
        )
    if ckpt.sidecar is not None:
        sc = ckpt.sidecar
        for name, ti in sc.tensors.items():
            tensors.append(
                _Tensor(
                    f"{SIDECAR_FILE}:{name}",
                    name,
                    ti,
                    SIDECAR_FILE,
                    PART_SIDECAR,
                    abs_path=sc.path,
                    abs_offset=sc.data_start + ti.begin,
                )
            )
    adapter, adapter_tensors = _local_adapter(ckpt)
    tensors.extend(adapter_tensors)
    layout = "sharded" if ckpt.sharded else "single-file"
    return _Loaded(source=info, ckpt=ckpt, layout=layout, tensors=tensors, adapter=adapter)


def _adapter_record(manifest: Mapping[str, Any] | None, has_default: bool) -> tuple[str, str, bool, list[str]] | None:
    """(name, subfolder, recorded, problems) of the reward adapter, or None when there is none."""
    rec = (manifest or {}).get("reward_adapter")
    if rec is None:
        if has_default:
            return DEFAULT_ADAPTER_SUBFOLDER, DEFAULT_ADAPTER_SUBFOLDER, False, []
        return None
    if not isinstance(rec, dict):
        return "?", DEFAULT_ADAPTER_SUBFOLDER, True, [f"vhtool.json reward_adapter must be an object, got {rec!r}"]
    name = rec.get("name") or rec.get("subfolder") or DEFAULT_ADAPTER_SUBFOLDER
    sub = rec.get("subfolder") or name
    if not isinstance(name, str) or not isinstance(sub, str):
        return (
            str(name),
            DEFAULT_ADAPTER_SUBFOLDER,
            True,
            ["vhtool.json reward_adapter name/subfolder must be strings"],
        )
    return name, sub.strip("/"), True, []


def _local_adapter(ckpt: Checkpoint) -> tuple[AdapterReport | None, list[_Tensor]]:
    root = ckpt.path
    rec = _adapter_record(ckpt.manifest, (root / DEFAULT_ADAPTER_SUBFOLDER / ADAPTER_CONFIG).is_file())
    if rec is None:
        return None, []
    name, sub, recorded, problems = rec
    if problems:
        return _adapter_report(name, sub, recorded, None, {}, problems, ckpt.config), []
    folder = safe_member(root, sub, "the reward adapter subfolder")
    if not folder.is_dir():
        problems.append(f"subfolder {sub}/ is missing")
        return _adapter_report(name, sub, recorded, None, {}, problems, ckpt.config), []
    cfg: dict[str, Any] | None = None
    cfg_path = safe_member(root, f"{sub}/{ADAPTER_CONFIG}", "the reward adapter config")
    if not cfg_path.is_file():
        problems.append(f"{sub}/{ADAPTER_CONFIG} is missing")
    else:
        try:
            cfg = read_json_object(cfg_path, ADAPTER_CONFIG)
        except CheckpointError as exc:
            problems.append(str(exc))
    tensors: list[_Tensor] = []
    infos: dict[str, TensorInfo] = {}
    weights = safe_member(root, f"{sub}/{ADAPTER_WEIGHTS}", "the reward adapter weights")
    rel = f"{sub}/{ADAPTER_WEIGHTS}"
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").exists()
        problems.append(
            f"{rel} is missing"
            + (" (only a pickle adapter_model.bin, which vhtool never unpickles)" if pickled else "")
        )
    else:
        try:
            hdr = read_header(weights)
        except CheckpointError as exc:
            problems.append(str(exc))
        else:
            infos = dict(hdr.tensors)
            for tname, ti in hdr.tensors.items():
                tensors.append(
                    _Tensor(
                        f"{rel}:{tname}",
                        tname,
                        ti,
                        rel,
                        PART_ADAPTER,
                        abs_path=hdr.path,
                        abs_offset=hdr.data_start + ti.begin,
                    )
                )
    return _adapter_report(name, sub, recorded, cfg, infos, problems, ckpt.config), tensors


def _adapter_report(
    name: str,
    sub: str,
    recorded: bool,
    cfg: Mapping[str, Any] | None,
    infos: Mapping[str, TensorInfo],
    problems: list[str],
    model_config: Mapping[str, Any],
) -> AdapterReport:
    problems = list(problems)
    cfg = cfg or {}
    peft_type = cfg.get("peft_type")
    task_type = cfg.get("task_type")
    if cfg and peft_type != "LORA":
        problems.append(f"peft_type is {peft_type!r}, not 'LORA'")
    if cfg and task_type != "SEQ_CLS":
        problems.append(f"task_type is {task_type!r}; a reward adapter is trained for SEQ_CLS")
    lora = [n for n in infos if _LORA_RE.search(n)]
    scores = sorted(n for n in infos if _SCORE_RE.search(n) and not _LORA_RE.search(n) and n.endswith("weight"))
    score: dict[str, Any] | None = None
    if infos and not lora:
        problems.append("adapter weights hold no LoRA tensors")
    if infos:
        if not scores:
            problems.append("adapter carries no score head (score.weight); a reward adapter needs one")
        else:
            ti = infos[scores[0]]
            score = {"name": ti.name, "shape": list(ti.shape), "dtype": ti.dtype}
            try:
                hidden: int | None = hidden_size(dict(model_config))
            except InputError:
                hidden = None
            if hidden is not None and ti.shape != (1, hidden):
                problems.append(f"score head {ti.name} is {list(ti.shape)}, expected [1, {hidden}]")
            if ti.dtype not in FLOAT_DTYPES:
                problems.append(f"score head {ti.name} has dtype {ti.dtype}, not one of {sorted(FLOAT_DTYPES)}")
    tm = cfg.get("target_modules")
    target: tuple[str, ...] | str | None
    if isinstance(tm, list):
        target = tuple(str(x) for x in tm)
    elif isinstance(tm, str):
        target = tm
    else:
        target = None
    r = cfg.get("r")
    alpha = cfg.get("lora_alpha")
    return AdapterReport(
        name=name,
        subfolder=sub,
        recorded=recorded,
        peft_type=peft_type if isinstance(peft_type, str) else None,
        task_type=task_type if isinstance(task_type, str) else None,
        r=r if isinstance(r, int) else None,
        lora_alpha=alpha if isinstance(alpha, (int, float)) else None,
        target_modules=target,
        lora_tensors=len(lora),
        score=score,
        problems=tuple(problems),
    )


# ----- Hub


def _load_hub(repo_id: str, *, revision: str | None, token: str | bool | None) -> _Loaded:
    """Reads a Hub repo's headers through HTTP range requests (``get_safetensors_metadata``), never its data."""
    from huggingface_hub import constants

    offline_hint = (
        f"cannot reach the Hub for {repo_id!r} (offline mode or no connection) and it is not in the local cache. "
        f"Unset HF_HUB_OFFLINE, or download it on a connected machine (`hf download {repo_id}`) and pass the "
        "local directory."
    )
    if constants.HF_HUB_OFFLINE:
        return _load_cached(repo_id, revision=revision, hint=offline_hint)
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # get_safetensors_metadata draws a tqdm bar per sharded repo, even off a terminal
    try:
        return _fetch_hub(repo_id, revision=revision, token=token, offline_hint=offline_hint)
    finally:
        if not bars_were_off:
            enable_progress_bars()


def _fetch_hub(repo_id: str, *, revision: str | None, token: str | bool | None, offline_hint: str) -> _Loaded:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        NotASafetensorsRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        SafetensorsParsingError,
    )

    api = HfApi(token=token)
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        info = api.model_info(repo_id, revision=revision)
        commit = info.sha
        files = {s.rfilename for s in (info.siblings or [])}
        if "config.json" not in files:
            raise InputError(f"{where}: not a checkpoint (no config.json in the repo).")
        if SINGLE_FILE not in files and INDEX_FILE not in files:
            raise InputError(f"{where}: not a checkpoint (no {SINGLE_FILE} or {INDEX_FILE} in the repo).")
        rev = commit or revision

        def download_json(name: str, what: str) -> dict[str, Any]:
            local = hf_hub_download(repo_id, name, revision=rev, token=token)
            return read_json_object(Path(local), what)

        config = download_json("config.json", "config.json")
        manifest = download_json(MANIFEST_FILE, "vhtool.json") if MANIFEST_FILE in files else None
        meta = api.get_safetensors_metadata(repo_id, revision=rev, token=token)
        weight_map = dict(meta.weight_map)
        if meta.sharded:
            missing = sorted(set(weight_map.values()) - files)
            if missing:
                raise CheckpointError(f"{where}: the index names {missing[0]!r}, which is not in the repo.")
        tensors: list[_Tensor] = []
        locs: dict[str, TensorLocation] = {}
        for fname, fmeta in sorted(meta.files_metadata.items()):
            for tname, t in fmeta.tensors.items():
                ti = _remote_info(tname, t, where=f"{where}/{fname}")
                if tname in locs:
                    raise CheckpointError(
                        f"{where}: tensor {tname!r} is stored in both {locs[tname].file} and {fname}."
                    )
                locs[tname] = TensorLocation(file=fname, info=ti)
                tensors.append(_Tensor(tname, tname, ti, fname, PART_MODEL))
        sidecar: SafetensorsHeader | None = None
        if SIDECAR_FILE in files:
            sm = api.parse_safetensors_file_metadata(repo_id, SIDECAR_FILE, revision=rev, token=token)
            stensors = {n: _remote_info(n, t, where=f"{where}/{SIDECAR_FILE}") for n, t in sm.tensors.items()}
            sidecar = SafetensorsHeader(
                path=Path(SIDECAR_FILE), header_size=0, tensors=stensors, metadata=dict(sm.metadata), file_size=0
            )
            tensors.extend(
                _Tensor(f"{SIDECAR_FILE}:{n}", n, ti, SIDECAR_FILE, PART_SIDECAR) for n, ti in stensors.items()
            )
        ckpt = Checkpoint(
            path=Path(repo_id),
            config=config,
            weight_files=sorted(meta.files_metadata),
            headers={},
            tensors=locs,
            index={"metadata": meta.metadata, "weight_map": weight_map} if meta.sharded else None,
            sidecar=sidecar,
            manifest=manifest,
        )
        adapter, adapter_tensors = _hub_adapter(api, repo_id, rev, token, files, ckpt)
        tensors.extend(adapter_tensors)
    except OfflineModeIsEnabled:
        return _load_cached(repo_id, revision=revision, hint=offline_hint)
    except GatedRepoError:
        raise InputError(f"{repo_id}: gated repo; log in (`hf auth login`) with a token that has access.") from None
    except RevisionNotFoundError:
        raise InputError(f"{repo_id}: revision {revision!r} does not exist on the Hub.") from None
    except RepositoryNotFoundError:
        raise HubUnavailableError(f"{repo_id}: no such model on the Hub (or no access with this token).") from None
    except NotASafetensorsRepoError:
        raise InputError(f"{where}: not a checkpoint (no {SINGLE_FILE} or {INDEX_FILE}).") from None
    except SafetensorsParsingError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except EntryNotFoundError as exc:
        raise CheckpointError(f"{where}: a file the checkpoint names is missing from the repo ({exc}).") from None
    except OSError as exc:  # connection errors (httpx / HfHubHTTPError are OSErrors)
        raise HubUnavailableError(f"{offline_hint} ({exc})") from None
    src = SourceInfo(kind="hub", location=repo_id, revision=revision, commit=commit)
    layout = "sharded" if meta.sharded else "single-file"
    return _Loaded(source=src, ckpt=ckpt, layout=layout, tensors=tensors, adapter=adapter)


def _remote_info(name: str, t: Any, *, where: str) -> TensorInfo:
    """A TensorInfo from huggingface_hub's header entry, validated like a local header."""
    dtype, shape, offsets = t.dtype, list(t.shape), list(t.data_offsets)
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}.")
    n = 1
    for d in shape:
        n *= d
    if len(offsets) != 2 or offsets[1] - offsets[0] != n * DTYPE_SIZES[dtype]:
        raise CheckpointError(f"{where}: tensor {name!r} {dtype}{shape} disagrees with its data_offsets {offsets}.")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _hub_adapter(
    api: Any, repo_id: str, rev: str | None, token: str | bool | None, files: set[str], ckpt: Checkpoint
) -> tuple[AdapterReport | None, list[_Tensor]]:
    from huggingface_hub import hf_hub_download

    rec = _adapter_record(ckpt.manifest, f"{DEFAULT_ADAPTER_SUBFOLDER}/{ADAPTER_CONFIG}" in files)
    if rec is None:
        return None, []
    name, sub, recorded, problems = rec
    if problems:
        return _adapter_report(name, sub, recorded, None, {}, problems, ckpt.config), []
    if any(part == ".." for part in sub.split("/")) or sub.startswith("/"):
        raise CheckpointError(f"{repo_id}: vhtool.json names the reward adapter subfolder {sub!r}, outside the repo.")
    cfg: dict[str, Any] | None = None
    if f"{sub}/{ADAPTER_CONFIG}" not in files:
        problems.append(f"{sub}/{ADAPTER_CONFIG} is missing")
    else:
        try:
            cfg = read_json_object(
                Path(hf_hub_download(repo_id, f"{sub}/{ADAPTER_CONFIG}", revision=rev, token=token)), ADAPTER_CONFIG
            )
        except CheckpointError as exc:
            problems.append(str(exc))
    rel = f"{sub}/{ADAPTER_WEIGHTS}"
    tensors: list[_Tensor] = []
    infos: dict[str, TensorInfo] = {}
    if rel not in files:
        problems.append(f"{rel} is missing")
    else:
        meta = api.parse_safetensors_file_metadata(repo_id, rel, revision=rev, token=token)
        for tname, t in meta.tensors.items():
            ti = _remote_info(tname, t, where=f"{repo_id}/{rel}")
            infos[tname] = ti
            tensors.append(_Tensor(f"{rel}:{tname}", tname, ti, rel, PART_ADAPTER))
    return _adapter_report(name, sub, recorded, cfg, infos, problems, ckpt.config), tensors


def _load_cached(repo_id: str, *, revision: str | None, hint: str) -> _Loaded:
    """Offline: inspect the repo from the local Hugging Face cache when it is there, else a clear exit-2 error."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        local = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        raise HubUnavailableError(hint) from None
    path = Path(local)
    commit = path.name if path.parent.name == "snapshots" else None
    loaded = _load_local(path, SourceInfo(kind="hub", location=repo_id, revision=revision, commit=commit))
    loaded.notes.append("offline: read from the local Hugging Face cache")
    return loaded


# --------------------------------------------------------------------------------------------------- grouping


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_containers(names: Iterable[str]) -> dict[str, int]:
    """Block containers (``transformer.h``, ``model.layers``, ``encoder.block``...) -> number of blocks.

    A container is the prefix before the first ``.<integer>.`` segment of a tensor name; nested
    repeats (experts inside a block) belong to their block.
    """
    found: dict[str, int] = {}
    for name in names:
        m = _BLOCK_RE.search(name)
        if m is None or m.end() == len(name):
            continue
        prefix, idx = name[: m.start()], int(m.group(1))
        found[prefix] = max(found.get(prefix, 0), idx + 1)
    return found


def _container_order(prefix: str) -> tuple[int, str]:
    return (0 if "encoder" in prefix else 1, prefix)


def _classify(t: _Tensor, containers: Mapping[str, int]) -> tuple[str, str | None, int | None]:
    """(kind, container, block index) of a tensor."""
    if t.part == PART_ADAPTER:
        return "reward_adapter", None, None
    if t.part == PART_SIDECAR or t.name in _VALUE_HEAD_NAMES:
        return "value_head", None, None
    m = _BLOCK_RE.search(t.name)
    if m is not None and m.end() < len(t.name) and t.name[: m.start()] in containers:
        return "block", t.name[: m.start()], int(m.group(1))
    if _LM_HEAD_RE.search(t.name):
        return "lm_head", None, None
    if is_embedding_name(t.name):
        return "embeddings", None, None
    if _NORM_RE.search(t.name):
        return "final_norm", None, None
    return "other", None, None


def _shared_names(manifest: Mapping[str, Any] | None, names: list[str]) -> tuple[set[str], str | None]:
    """Tensor names a reference shares with its policy, from vhtool.json ``reference`` (and a note if unclear).

    ``shared_tensors`` is authoritative; without it, ``shared_layers`` + ``pattern`` are resolved the way
    ``make-reference`` does (:func:`vhtool.checkpoint.blocks.shared_tensor_names`).
    """
    from vhtool.checkpoint.blocks import Blocks, find_blocks, shared_tensor_names

    ref = (manifest or {}).get("reference")
    if not isinstance(ref, dict):
        return set(), None
    listed = ref.get("shared_tensors")
    if isinstance(listed, list) and listed:
        return {_strip_wrapper(str(n)) for n in listed}, None
    n_shared = ref.get("shared_layers")
    if not isinstance(n_shared, int) or isinstance(n_shared, bool) or n_shared <= 0:
        return set(), None
    pattern = ref.get("pattern")
    try:
        found = find_blocks(names, _strip_wrapper(pattern) if isinstance(pattern, str) else None)
        blocks = Blocks(pattern=found.pattern, num_blocks=found.num_blocks)
        return set(shared_tensor_names(names, blocks, min(n_shared, blocks.num_blocks))), None
    except InputError as exc:
        return set(), f"vhtool.json reference: cannot tell which tensors are shared ({exc})"


def _strip_wrapper(name: str) -> str:
    return name.removeprefix("pretrained_model.")


def _token_embedding(candidates: list[_Tensor], config: Mapping[str, Any]) -> str | None:
    """The input token embedding among the embeddings tensors: ``[vocab_size, ...]``, else the largest 2-D one."""
    two_d = [t for t in candidates if len(t.info.shape) == 2]
    vocab = config.get("vocab_size")
    by_vocab = [t for t in two_d if t.info.shape[0] == vocab]
    pool = by_vocab or two_d
    return max(pool, key=lambda t: (t.info.numel, t.name)).name if pool else None


def _tie_embeddings(config: Mapping[str, Any]) -> bool:
    value = config.get("tie_word_embeddings")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("tie_word_embeddings")
    return True if value is None else bool(value)  # transformers' PretrainedConfig default is True


# --------------------------------------------------------------------------------------------------- inspect


def inspect_checkpoint(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    filter_glob: str | None = None,
    token: str | bool | None = None,
) -> InspectResult:
    """Describes a checkpoint from its headers: grouped tensors, totals, value head, reward adapter, sharing.

    Args:
        source: a local checkpoint directory, ``builtin:NAME`` or a Hub repo id. A path that exists is
            never sent to the Hub.
        revision: Hub revision (branch, tag or commit); refused for local paths.
        filter_glob: keep only tensors whose name matches this ``fnmatch`` pattern (groups and totals
            are computed over those); the value-head and adapter reports always see every tensor.
        token: Hub token (default: the usual Hugging Face sources).

    Raises:
        InputError: not a checkpoint, a missing path, an invalid Hub id or revision.
        CheckpointError: a malformed header, index or JSON file.
        HubUnavailableError: a Hub id that cannot be reached (offline and not cached, no such repo).
    """
    loaded = _load(str(source), revision=revision, token=token)
    return _describe(loaded, filter_glob=filter_glob)


def _describe(loaded: _Loaded, *, filter_glob: str | None) -> InspectResult:
    ckpt = loaded.ckpt
    config = ckpt.config
    manifest = ckpt.manifest or {}
    model_names = [t.name for t in loaded.tensors if t.part == PART_MODEL and t.name not in _VALUE_HEAD_NAMES]
    containers = find_containers(model_names)
    role = manifest.get("role") if isinstance(manifest.get("role"), str) else None
    frozen = role == "reference"
    shared, shared_note = _shared_names(manifest, model_names) if frozen else (set(), None)
    if shared_note:
        loaded.notes.append(shared_note)

    rows: list[tuple[tuple[Any, ...], str, str, str | None, int | None, _Tensor, tuple[str, ...]]] = []
    kind_rank = {k: i for i, k in enumerate(KINDS)}
    for t in loaded.tensors:
        kind, container, index = _classify(t, containers)
        marks: list[str] = []
        if t.part == PART_MODEL:
            if t.name in shared:
                marks.append("shared")
            if frozen:
                marks.append("frozen")
        if _LORA_RE.search(t.name):
            marks.append("lora")
        elif t.part == PART_ADAPTER and _SCORE_RE.search(t.name):
            marks.append("score")
        if t.part == PART_SIDECAR:
            marks.append("sidecar")
        if kind == "block":
            assert container is not None and index is not None
            gid = f"block:{container}.{index}"
            order: tuple[Any, ...] = (kind_rank[kind], _container_order(container), index)
        elif kind == "reward_adapter":
            sub = "lora" if "lora" in marks else ("score" if "score" in marks else "other")
            gid = f"reward_adapter:{sub}"
            order = (kind_rank[kind], ("lora", "score", "other").index(sub))
        else:
            gid = kind
            order = (kind_rank[kind],)
        rows.append((order, gid, kind, container, index, t, tuple(marks)))

    has_lm_head = any(r[2] == "lm_head" for r in rows)
    tied = _tie_embeddings(config) and not has_lm_head
    tied_name = _token_embedding([r[5] for r in rows if r[2] == "embeddings"], config) if tied else None
    if filter_glob is not None:
        rows = [r for r in rows if fnmatch.fnmatchcase(r[5].name, filter_glob)]
    rows.sort(key=lambda r: (r[0], _natural_key(r[5].name)))

    tensor_rows: list[TensorRow] = []
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        order, gid, kind, container, index, t, tmarks = r
        if t.name == tied_name and t.part == PART_MODEL:
            tmarks = (*tmarks, "tied")
        tensor_rows.append(
            TensorRow(
                name=t.name,
                shape=t.info.shape,
                dtype=t.info.dtype,
                params=t.info.numel,
                nbytes=t.info.nbytes,
                file=t.file,
                part=t.part,
                group=gid,
                marks=tmarks,
            )
        )
        grouped.setdefault(gid, []).append((order, kind, container, index, tensor_rows[-1]))

    adapter_name = loaded.adapter.name if loaded.adapter else ""
    groups: list[tuple[tuple[Any, ...], GroupRow]] = []
    for gid, members in grouped.items():
        order, kind, container, index, _ = members[0]
        trs = [m[4] for m in members]
        groups.append((order, _group_row(gid, kind, container, index, trs, adapter_name)))
    if tied and filter_glob is None:
        groups.append(
            (
                (kind_rank["lm_head"],),
                GroupRow(
                    id="lm_head",
                    kind="lm_head",
                    label="LM head (tied to embeddings)",
                    container=None,
                    index=None,
                    tensors=0,
                    params=0,
                    nbytes=0,
                    dtypes=(),
                    marks=("tied",),
                ),
            )
        )
    groups.sort(key=lambda g: g[0])

    by_dtype: dict[str, tuple[int, int, int]] = {}
    for tr in tensor_rows:
        n, p, b = by_dtype.get(tr.dtype, (0, 0, 0))
        by_dtype[tr.dtype] = (n + 1, p + tr.params, b + tr.nbytes)
    totals = Totals(
        tensors=len(tensor_rows),
        params=sum(t.params for t in tensor_rows),
        nbytes=sum(t.nbytes for t in tensor_rows),
        by_dtype=by_dtype,
    )

    files: dict[str, dict[str, Any]] = {}
    for t in loaded.tensors:
        f = files.setdefault(t.file, {"name": t.file, "part": t.part, "tensors": 0, "bytes": 0})
        f["tensors"] += 1
        f["bytes"] += t.info.nbytes
    reference = None
    if frozen:
        raw_ref = manifest.get("reference")
        ref: dict[str, Any] = raw_ref if isinstance(raw_ref, dict) else {}
        reference = {
            "shared_layers": ref.get("shared_layers"),
            "pattern": ref.get("pattern"),
            "num_blocks": ref.get("num_blocks"),
            "shared_tensors": len(shared),
        }
    try:
        hidden: int | None = hidden_size(config)
    except InputError:
        hidden = None
    model = {
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "is_encoder_decoder": bool(config.get("is_encoder_decoder", False)),
        "hidden_size": hidden,
        "tie_word_embeddings": _tie_embeddings(config),
    }
    return InspectResult(
        source=loaded.source,
        model=model,
        role=role,
        layout=loaded.layout,
        files=tuple(sorted(files.values(), key=lambda f: (f["part"] != PART_MODEL, f["name"]))),
        filter=filter_glob,
        containers=tuple(sorted(containers.items(), key=lambda c: _container_order(c[0]))),
        groups=tuple(g for _, g in groups),
        tensors=tuple(tensor_rows),
        totals=totals,
        value_head=_value_head_report(ckpt, hidden),
        reward_adapter=loaded.adapter,
        reference=reference,
        notes=tuple(loaded.notes),
    )


def _group_row(
    gid: str, kind: str, container: str | None, index: int | None, trs: list[TensorRow], adapter_name: str
) -> GroupRow:
    labels = {
        "embeddings": "embeddings",
        "final_norm": "final norm",
        "lm_head": "LM head",
        "value_head": "value head",
        "other": "other",
    }
    if kind == "block":
        label = f"{container}.{index}"
    elif kind == "reward_adapter":
        label = f"reward adapter {adapter_name}: " + {
            "reward_adapter:lora": "LoRA",
            "reward_adapter:score": "score head",
        }.get(gid, "other")
    else:
        label = labels[kind]
    all_marks: list[str] = []
    for mark in ("shared", "frozen", "tied", "lora", "score", "sidecar"):
        having = sum(1 for t in trs if mark in t.marks)
        if having == len(trs):
            all_marks.append(mark)
        elif having and mark == "shared":
            all_marks.append("partly-shared")
        elif having and mark in ("lora", "tied"):
            all_marks.append(mark)
    return GroupRow(
        id=gid,
        kind=kind,
        label=label,
        container=container,
        index=index,
        tensors=len(trs),
        params=sum(t.params for t in trs),
        nbytes=sum(t.nbytes for t in trs),
        dtypes=tuple(sorted({t.dtype for t in trs})),
        marks=tuple(all_marks),
    )


def _value_head_report(ckpt: Checkpoint, hidden: int | None) -> ValueHeadReport:
    heads = find_heads(ckpt)
    problems: list[str] = []
    notes: list[str] = []
    docs = tuple(
        {
            "convention": h.convention,
            "description": h.description,
            "file": h.file,
            "weight": h.weight,
            "shape": list(h.shape),
            "dtype": h.dtype,
            "bias": h.bias,
            "bias_shape": list(h.bias_shape) if h.bias_shape is not None else None,
            "bias_dtype": h.bias_dtype,
        }
        for h in heads
    )
    if heads:
        h = heads[0]
        if hidden is None:
            problems.append("config.json has no usable hidden size, so the head's width cannot be checked")
        elif h.shape != (1, hidden):
            problems.append(
                f"{h.weight} is {list(h.shape)}, expected [1, {hidden}] (one output, hidden size {hidden})"
            )
        if h.dtype not in FLOAT_DTYPES:
            problems.append(
                f"{h.weight} has dtype {h.dtype}; a value head must be one of {', '.join(sorted(FLOAT_DTYPES))}"
            )
        if h.bias is None:
            notes.append(f"{h.weight} has no bias tensor")
        else:
            if h.bias_shape != (1,):
                problems.append(f"{h.bias} is {list(h.bias_shape or ())}, expected [1]")
            if h.bias_dtype not in FLOAT_DTYPES:
                problems.append(
                    f"{h.bias} has dtype {h.bias_dtype}; expected one of {', '.join(sorted(FLOAT_DTYPES))}"
                )
        if len(heads) > 1:
            notes.append("several head conventions are present: " + ", ".join(x.convention for x in heads))
    return ValueHeadReport(heads=docs, hidden_size=hidden, problems=tuple(problems), notes=tuple(notes))


# --------------------------------------------------------------------------------------------------- diff


def diff_checkpoints(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    revision: str | None = None,
    filter_glob: str | None = None,
    hash: bool = False,
    token: str | bool | None = None,
    progress_factory: ProgressFactory | None = None,
) -> DiffResult:
    """Compares two checkpoints by their headers; with ``hash``, also the bytes of tensors present in both.

    Tensors of the model are matched by name; sidecar and adapter tensors by ``<file>:<name>``.
    Hashing reads each local file once, tensor by tensor in offset order, in 1 MiB chunks.

    Args:
        a: first checkpoint (local path, ``builtin:`` or Hub id).
        b: second checkpoint.
        revision: Hub revision of ``a`` (``b`` is read at its default branch).
        filter_glob: compare only tensors whose name matches this ``fnmatch`` pattern.
        hash: also compare tensor bytes (sha256); needs local checkpoints.
        token: Hub token.
        progress_factory: called with the bytes to hash; returns a callback taking byte counts.

    Raises:
        InputError: as :func:`inspect_checkpoint`, or ``hash`` on a Hub repo.
    """
    la = _load(str(a), revision=revision, token=token)
    lb = _load(str(b), revision=None, token=token)
    if hash:
        for loaded in (la, lb):
            if any(t.abs_path is None for t in loaded.tensors):
                raise InputError(
                    f"{loaded.source.location}: --hash reads tensor data and needs a local checkpoint; download the "
                    f"repo (`hf download {loaded.source.location}`) and pass the directory."
                )

    def keep(ts: list[_Tensor]) -> dict[str, _Tensor]:
        return {t.key: t for t in ts if filter_glob is None or fnmatch.fnmatchcase(t.name, filter_glob)}

    ta, tb = keep(la.tensors), keep(lb.tensors)

    def brief(t: _Tensor) -> dict[str, Any]:
        return {"name": t.key, "shape": list(t.info.shape), "dtype": t.info.dtype, "file": t.file}

    only_a = tuple(brief(ta[k]) for k in sorted(set(ta) - set(tb), key=_natural_key))
    only_b = tuple(brief(tb[k]) for k in sorted(set(tb) - set(ta), key=_natural_key))
    common = sorted(set(ta) & set(tb), key=_natural_key)
    changed: list[dict[str, Any]] = []
    same_layout: list[str] = []
    for k in common:
        x, y = ta[k], tb[k]
        if x.info.shape != y.info.shape or x.info.dtype != y.info.dtype:
            changed.append(
                {
                    "name": k,
                    "a": {"shape": list(x.info.shape), "dtype": x.info.dtype},
                    "b": {"shape": list(y.info.shape), "dtype": y.info.dtype},
                }
            )
        else:
            same_layout.append(k)
    differ: list[str] = []
    hashed_bytes = 0
    if hash and same_layout:
        total = 2 * sum(ta[k].info.nbytes for k in same_layout)
        advance = progress_factory(total) if progress_factory else None
        ha = _hash_ranges([ta[k] for k in same_layout], advance)
        hb = _hash_ranges([tb[k] for k in same_layout], advance)
        differ = [k for k in same_layout if ha[k] != hb[k]]
        hashed_bytes = total
    return DiffResult(
        a=la.source,
        b=lb.source,
        filter=filter_glob,
        compared=len(common),
        only_in_a=only_a,
        only_in_b=only_b,
        changed=tuple(changed),
        hashed=hash,
        bytes_differ=tuple(differ),
        hashed_bytes=hashed_bytes,
    )


def _hash_range(fh: Any, t: _Tensor, view: memoryview, advance: Callable[[int], None] | None) -> str:
    import hashlib  # only --diff --hash needs it; keeps OpenSSL out of the header-only start-up

    h = hashlib.sha256()
    fh.seek(t.abs_offset)
    left = t.info.nbytes
    while left:
        n = fh.readinto(view[: min(left, _HASH_CHUNK)])
        if not n:
            raise CheckpointError(f"{t.abs_path}: ends inside tensor {t.name!r} (truncated file).")
        h.update(view[:n])
        left -= n
        if advance:
            advance(n)
    return h.hexdigest()


def _hash_ranges(tensors: list[_Tensor], advance: Callable[[int], None] | None) -> dict[str, str]:
    """sha256 of each tensor's byte range; one file open at a time, ranges read in offset order, 1 MiB buffer."""
    by_file: dict[Path, list[_Tensor]] = {}
    for t in tensors:
        assert t.abs_path is not None
        by_file.setdefault(t.abs_path, []).append(t)
    out: dict[str, str] = {}
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    for path, members in by_file.items():
        try:
            with open(path, "rb", buffering=0) as fh:
                for t in sorted(members, key=lambda m: m.abs_offset):
                    out[t.key] = _hash_range(fh, t, view, advance)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return out


__all__ = [
    "SCHEMA_VERSION",
    "AdapterReport",
    "DiffResult",
    "GroupRow",
    "InspectResult",
    "SourceInfo",
    "TensorRow",
    "Totals",
    "ValueHeadReport",
    "diff_checkpoints",
    "find_containers",
    "inspect_checkpoint",
]
