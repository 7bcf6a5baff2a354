"""Where a checkpoint keeps its value (or reward) head: the naming conventions of the field, by header."""

from __future__ import annotations

from dataclasses import dataclass

from vhtool.checkpoint.layout import SIDECAR_FILE, Checkpoint
from vhtool.choices import CONVENTIONS as CONVENTIONS
from vhtool.errors import InputError

VHEAD_WEIGHT = "v_head.summary.weight"
VHEAD_BIAS = "v_head.summary.bias"

#: convention name -> (weight key, bias key or None), in order of preference.
KNOWN_HEADS: dict[str, tuple[str, str | None]] = {
    "vhtool": (VHEAD_WEIGHT, VHEAD_BIAS),
    "score": ("score.weight", "score.bias"),
    "value_head": ("value_head.weight", "value_head.bias"),
    "classifier": ("classifier.weight", "classifier.bias"),
}

DESCRIPTIONS = {
    "vhtool": "vhtool/TRL inline (v_head.summary.* among the model's tensors)",
    "sidecar": "sidecar (v_head.summary.* in value_head.safetensors)",
    "score": "sequence-classification head (score.weight)",
    "value_head": "critic head (value_head.weight, OpenRLHF style)",
    "classifier": "token-classification head (classifier.weight, GPT-2 family)",
}

#: Tensor-name prefixes of a causal LM's output projection (``embed_out`` is GPT-NeoX's).
LM_HEAD_PREFIXES = ("lm_head.", "embed_out.")


@dataclass(frozen=True)
class HeadFound:
    """A value/reward head found in a checkpoint's headers."""

    convention: str
    file: str
    weight: str
    bias: str | None
    shape: tuple[int, ...]
    dtype: str
    bias_shape: tuple[int, ...] | None
    bias_dtype: str | None

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.convention]


def find_heads(ckpt: Checkpoint) -> list[HeadFound]:
    """Every known head convention present in ``ckpt`` (usually zero or one)."""
    found: list[HeadFound] = []
    for conv, (wkey, bkey) in KNOWN_HEADS.items():
        loc = ckpt.tensors.get(wkey)
        if loc is None:
            continue
        b = ckpt.tensors.get(bkey) if bkey else None
        found.append(
            HeadFound(
                convention=conv,
                file=loc.file,
                weight=wkey,
                bias=bkey if b else None,
                shape=loc.info.shape,
                dtype=loc.info.dtype,
                bias_shape=b.info.shape if b else None,
                bias_dtype=b.info.dtype if b else None,
            )
        )
    if ckpt.sidecar is not None and VHEAD_WEIGHT in ckpt.sidecar.tensors:
        w = ckpt.sidecar.tensors[VHEAD_WEIGHT]
        sb = ckpt.sidecar.tensors.get(VHEAD_BIAS)
        found.append(
            HeadFound(
                convention="sidecar",
                file=SIDECAR_FILE,
                weight=VHEAD_WEIGHT,
                bias=VHEAD_BIAS if sb else None,
                shape=w.shape,
                dtype=w.dtype,
                bias_shape=sb.shape if sb else None,
                bias_dtype=sb.dtype if sb else None,
            )
        )
    return found


@dataclass(frozen=True)
class Detected:
    """The convention a checkpoint follows as a whole, its head, and what it has for an LM head."""

    convention: str
    head: HeadFound
    lm_head: tuple[str, ...]
    tied: bool

    @property
    def has_lm_head(self) -> bool:
        """True when the checkpoint can produce LM logits: an LM-head tensor, or embeddings tied to one."""
        return bool(self.lm_head) or self.tied


def lm_head_tensors(ckpt: Checkpoint) -> tuple[str, ...]:
    """Names of the LM-head tensors (``lm_head.*``, ``embed_out.*``) among the checkpoint's weights."""
    return tuple(sorted(n for n in ckpt.tensors if n.startswith(LM_HEAD_PREFIXES)))


def ties_embeddings(config: dict[str, object]) -> bool:
    """``tie_word_embeddings`` as transformers reads it (absent means True, PretrainedConfig's default)."""
    for cfg in (config, config.get("text_config")):
        if isinstance(cfg, dict) and "tie_word_embeddings" in cfg:
            return bool(cfg["tie_word_embeddings"])
    return True


def classifier_kind(config: dict[str, object], head: HeadFound) -> str:
    """``seq-cls`` or ``token-cls`` for a classifier-style head, from ``architectures`` or else the bias.

    HF names say it (``...ForSequenceClassification`` / ``...ForTokenClassification``); OpenRLHF saves
    ``RewardModel`` / ``CriticModel``; otherwise a head with a bias is a token classifier (HF's token
    heads have one, its sequence heads never do).
    """
    archs = config.get("architectures")
    names = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    for a in names:
        if a.endswith("ForTokenClassification") or "Critic" in a:
            return "token-cls"
        if a.endswith("ForSequenceClassification") or "Reward" in a:
            return "seq-cls"
    return "token-cls" if head.bias else "seq-cls"


def tensor_name_summary(ckpt: Checkpoint, *, limit: int = 8) -> str:
    """What a checkpoint holds, for messages: top-level prefixes and any ``*head*``/``*score*`` tensors."""
    prefixes = sorted({n.split(".", 1)[0] + ("." if "." in n else "") for n in ckpt.tensors})
    shown = ", ".join(f"{p}*" if p.endswith(".") else p for p in prefixes[:limit])
    if len(prefixes) > limit:
        shown += f", ... ({len(prefixes)} prefixes)"
    words = ("head", "score", "classifier", "reward", "value")
    headish = sorted(n for n in ckpt.tensors if any(w in n.lower() for w in words))
    if ckpt.sidecar is not None:
        headish += [f"{SIDECAR_FILE}:{n}" for n in sorted(ckpt.sidecar.tensors)]
    found = f"; head-like tensors: {', '.join(headish[:limit])}" if headish else "; no head-like tensors"
    if len(headish) > limit:
        found += f", ... ({len(headish)} in all)"
    return f"tensor prefixes: {shown or '(none)'}{found}"


def detect_convention(ckpt: Checkpoint) -> Detected:
    """The one convention ``ckpt`` follows (see :data:`CONVENTIONS`), read from headers and config only.

    Raises:
        InputError: no known head (the message lists what was found), or more than one.
    """
    heads = find_heads(ckpt)
    if not heads:
        known = ", ".join(w for w, _ in KNOWN_HEADS.values())
        raise InputError(
            f"{ckpt.path}: no value or reward head of a known convention (looked for {known} and "
            f"{SIDECAR_FILE}); found {tensor_name_summary(ckpt)}."
        )
    if len(heads) > 1:
        kinds = "; ".join(f"{h.description} in {h.file}" for h in heads)
        raise InputError(
            f"{ckpt.path}: ambiguous, holds {len(heads)} heads ({kinds}); remove all but one before converting."
        )
    head = heads[0]
    conv = head.convention if head.convention in ("vhtool", "sidecar") else classifier_kind(ckpt.config, head)
    return Detected(convention=conv, head=head, lm_head=lm_head_tensors(ckpt), tied=ties_embeddings(ckpt.config))
