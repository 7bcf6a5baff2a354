"""Where a sequence's reward is read, and how it is normalised: the rule of the source's convention.

The same weights give a different number depending on the token read (see ``docs/conventions.md``):

* ``last``: the last token (a value head's, a critic's per-sequence value, verl's reward models, trlx);
* ``last-non-pad``: the rightmost token whose id is not the config's ``pad_token_id`` (transformers'
  ``...ForSequenceClassification``: a text ending in its pad token, GPT-2's eos, is read before it);
* ``eos``: the sequence made to end with the EOS id (appended when missing, replacing the last token when the
  model has no room), read there: OpenRLHF's reward dataset appends the EOS and its model reads the last attended
  position (openrlhf/datasets/reward_dataset.py:142-169, openrlhf/models/model.py:214, 235);
* ``before-eos``: the token before the first EOS (= pad) id after the first position, the last token when there is
  none: DeepSpeed-Chat's ``forward_value`` and trlx's summarisation RM read the token before the first pad, and
  both pad with the EOS (dschat/utils/model/reward_model.py:148-167). Position 0 is skipped because OPT's
  tokenizer starts every text with ``</s>``, its EOS (DeepSpeed-Chat's ``num_padding_at_beginning=1``).

Normalisation (OpenRLHF): ``(r - mean) / std`` when the config (or ``vhtool.json``) says ``normalize_reward``;
applied to every token's output, as OpenRLHF's critic does (model.py:309-310) and its reward model at the read one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vhtool.checkpoint.conventions import READOUT_RULES
from vhtool.errors import InputError


@dataclass(frozen=True)
class Readout:
    """The readout rule and normalisation one scoring run applies.

    Attributes:
        rule: one of ``READOUT_RULES``.
        reason: where the rule came from (``--readout``, ``vhtool.json``, the convention's), for the report.
        eos_id: the EOS id (``eos``, ``before-eos``).
        pad_id: the config's ``pad_token_id`` (``last-non-pad``).
        normalization: ``{"normalize_reward": True, "mean", "std"}`` or empty.
    """

    rule: str
    reason: str
    eos_id: int | None = None
    pad_id: int | None = None
    normalization: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in READOUT_RULES:
            raise InputError(f"unknown readout {self.rule!r}; choose one of {', '.join(READOUT_RULES)}.")
        if self.rule in ("eos", "before-eos") and self.eos_id is None:
            raise InputError(
                f"--readout {self.rule} needs an EOS id, and neither the tokenizer nor config.json has one."
            )

    def prepare(self, ids: list[int], *, limit: int | None) -> list[int]:
        """The ids the model runs on: ``eos`` makes the sequence end with the EOS id; the others leave it as it is."""
        if self.rule != "eos" or (ids and ids[-1] == self.eos_id):
            return ids
        assert self.eos_id is not None
        if limit is not None and len(ids) >= limit:
            return [*ids[: limit - 1], self.eos_id]  # OpenRLHF overwrites the last token rather than lose the EOS
        return [*ids, self.eos_id]

    def index(self, seq: Sequence[int]) -> int:
        """The position of ``seq`` (unpadded) whose output is the sequence's score."""
        n = len(seq)
        if self.rule == "last-non-pad" and self.pad_id is not None:
            return next((i for i in range(n - 1, -1, -1) if seq[i] != self.pad_id), 0)
        if self.rule == "before-eos":
            return next((i - 1 for i in range(1, n) if seq[i] == self.eos_id), n - 1)
        return n - 1

    @property
    def normalizes(self) -> bool:
        return bool(self.normalization.get("normalize_reward"))

    def normalize(self, out: Any) -> Any:
        """``(out - mean) / std`` when normalising, else ``out``."""
        if not self.normalizes:
            return out
        return (out - float(self.normalization["mean"])) / float(self.normalization["std"])

    @property
    def worth_a_note(self) -> bool:
        """Whether the report should say which rule was applied: anything but the plain last-token defaults."""
        return (
            self.normalizes
            or self.reason == "--readout"
            or self.rule in ("eos", "before-eos")
            or (self.reason.startswith("recorded"))
        )

    def describe(self) -> str:
        norm = (
            f", normalised (r - {float(self.normalization['mean']):g}) / {float(self.normalization['std']):g}"
            if self.normalizes
            else ""
        )
        return f"readout {self.rule} ({self.reason}){norm}"


def choose_readout(
    *,
    asked: str | None,
    recorded: str | None,
    convention_rule: str,
    convention: str,
    normalize: bool,
    normalization: Mapping[str, Any],
    eos_id: Any,
    pad_id: Any,
) -> Readout:
    """The readout: ``--readout``, else the one ``vhtool.json`` recorded at conversion, else the convention's."""
    if asked is not None:
        rule, reason = asked, "--readout"
    elif recorded is not None:
        rule, reason = recorded, "recorded in vhtool.json"
    else:
        rule, reason = convention_rule, f"{convention}'s rule"
    return Readout(
        rule=rule,
        reason=reason,
        eos_id=_int(eos_id),
        pad_id=_int(pad_id),
        normalization=dict(normalization) if normalize else {},
    )


def _int(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


__all__ = ["Readout", "choose_readout"]
