"""Grouping tensors the way a reader thinks of a model: embeddings, blocks, final norm, heads, adapter."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from vhtool.checkpoint.blocks import is_embedding_name
from vhtool.checkpoint.conventions import KNOWN_HEADS, TABLE_HEAD_NAMES
from vhtool.checkpoint.inspect.model import PART_ADAPTER, PART_SIDECAR, GroupRow, Tensor, TensorRow
from vhtool.checkpoint.manifest import Manifest
from vhtool.errors import InputError

_BLOCK_RE = re.compile(r"\.(\d+)(?=\.|$)")
_NORM_RE = re.compile(r"(^|\.)(norm|ln_f|final_layer_norm|final_layernorm|layer_norm|layernorm)\.")
#: ``base_model.`` is trlx's wrapper prefix (its state dict keeps the causal LM's head under it).
_LM_HEAD_RE = re.compile(r"^(base_model\.)?(lm_head|embed_out|final_logits_bias)(\.|$)")
LORA_RE = re.compile(r"(^|\.)lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")
SCORE_RE = re.compile(r"(^|\.)(score|classifier)(\.modules_to_save(\.[^.]+)?)?\.(weight|bias)$")
#: Every convention's head (the frameworks' too: trlx's ``v_head.0.*`` must not read as a block container).
VALUE_HEAD_NAMES = frozenset(n for pair in KNOWN_HEADS.values() for n in pair if n) | TABLE_HEAD_NAMES


def natural_key(name: str) -> list[Any]:
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


def container_order(prefix: str) -> tuple[int, str]:
    return (0 if "encoder" in prefix else 1, prefix)


def classify(t: Tensor, containers: Mapping[str, int]) -> tuple[str, str | None, int | None]:
    """(kind, container, block index) of a tensor."""
    if t.part == PART_ADAPTER:
        return "reward_adapter", None, None
    if t.part == PART_SIDECAR or t.name in VALUE_HEAD_NAMES:
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


def shared_names(manifest: Manifest | None, names: list[str]) -> tuple[set[str], str | None]:
    """Tensor names a reference shares with its policy, from vhtool.json ``reference`` (and a note if unclear).

    ``shared_tensors`` is authoritative; without it, ``shared_layers`` + ``pattern`` are resolved the way
    ``make-reference`` does (:func:`vhtool.checkpoint.blocks.shared_tensor_names`).
    """
    from vhtool.checkpoint.blocks import Blocks, find_blocks, shared_tensor_names

    ref = manifest.reference if manifest is not None else None
    if ref is None:
        return set(), None
    if ref.shared_tensors:
        return {strip_wrapper(n) for n in ref.shared_tensors}, None
    n_shared = ref.shared_layers
    if n_shared is None or n_shared <= 0:
        return set(), None
    pattern = ref.pattern
    try:
        found = find_blocks(names, strip_wrapper(pattern) if pattern is not None else None)
        blocks = Blocks(pattern=found.pattern, num_blocks=found.num_blocks)
        return set(shared_tensor_names(names, blocks, min(n_shared, blocks.num_blocks))), None
    except InputError as exc:
        return set(), f"vhtool.json reference: cannot tell which tensors are shared ({exc})"


def strip_wrapper(name: str) -> str:
    return name.removeprefix("pretrained_model.")


def token_embedding(candidates: list[Tensor], config: Mapping[str, Any]) -> str | None:
    """The input token embedding among the embeddings tensors: ``[vocab_size, ...]``, else the largest 2-D one."""
    two_d = [t for t in candidates if len(t.info.shape) == 2]
    vocab = config.get("vocab_size")
    by_vocab = [t for t in two_d if t.info.shape[0] == vocab]
    pool = by_vocab or two_d
    return max(pool, key=lambda t: (t.info.numel, t.name)).name if pool else None


def tie_embeddings(config: Mapping[str, Any]) -> bool:
    value = config.get("tie_word_embeddings")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("tie_word_embeddings")
    return True if value is None else bool(value)  # transformers' PretrainedConfig default is True


def group_row(
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
