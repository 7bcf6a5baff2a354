"""What ``inspect-layers`` reports: the result types, their JSON form (docs/inspect-schema.md), constants.

Also the tensors a reader collects (:class:`Tensor`, :class:`Loaded`) before they are described.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.conventions import KNOWN_HEADS
from vhtool.checkpoint.layout import Checkpoint
from vhtool.checkpoint.names import ADAPTER_CONFIG, DEFAULT_ADAPTER_SUBFOLDER
from vhtool.checkpoint.safetensors_io import TensorInfo

#: Version of the ``--json`` document (docs/inspect-schema.md). Bumped on any incompatible change.
SCHEMA_VERSION = 1

#: Group kinds in display order.
KINDS = ("embeddings", "block", "final_norm", "lm_head", "value_head", "reward_adapter", "other")

#: Parts of a checkpoint a tensor can come from.
PART_MODEL, PART_SIDECAR, PART_ADAPTER = "model", "sidecar", "reward_adapter"

ProgressFactory = Callable[[int], Callable[[int], None]]


def looked_for() -> str:
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
            return f"none found (looked for {looked_for()})"
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
                f"no value head found (looked for {looked_for()}); add one with `vhtool init`, or move a "
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


# --------------------------------------------------------------------------------------------------- read


@dataclass
class Tensor:
    """A tensor of any part, with what hashing needs when the source is local."""

    key: str  # unique across parts: the name for model tensors, "<file>:<name>" otherwise
    name: str
    info: TensorInfo
    file: str
    part: str
    abs_path: Path | None = None
    abs_offset: int = 0


@dataclass
class Loaded:
    source: SourceInfo
    ckpt: Checkpoint
    layout: str
    tensors: list[Tensor]
    adapter: AdapterReport | None
    notes: list[str] = field(default_factory=list)
