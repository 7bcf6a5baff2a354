"""Where a checkpoint keeps its value (or reward) head: the naming conventions of the field, by header."""

from __future__ import annotations

from dataclasses import dataclass

from vhtool.checkpoint.layout import SIDECAR_FILE, Checkpoint

VHEAD_WEIGHT = "v_head.summary.weight"
VHEAD_BIAS = "v_head.summary.bias"

#: convention name -> (weight key, bias key or None), in order of preference.
KNOWN_HEADS: dict[str, tuple[str, str | None]] = {
    "vhtool": (VHEAD_WEIGHT, VHEAD_BIAS),
    "score": ("score.weight", "score.bias"),
    "value_head": ("value_head.weight", "value_head.bias"),
}

DESCRIPTIONS = {
    "vhtool": "vhtool/TRL inline (v_head.summary.* among the model's tensors)",
    "sidecar": "sidecar (v_head.summary.* in value_head.safetensors)",
    "score": "sequence-classification head (score.weight)",
    "value_head": "critic head (value_head.weight, OpenRLHF style)",
}


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
        b = ckpt.sidecar.tensors.get(VHEAD_BIAS)
        found.append(
            HeadFound(
                convention="sidecar",
                file=SIDECAR_FILE,
                weight=VHEAD_WEIGHT,
                bias=VHEAD_BIAS if b else None,
                shape=w.shape,
                dtype=w.dtype,
                bias_shape=b.shape if b else None,
                bias_dtype=b.dtype if b else None,
            )
        )
    return found
