"""Preference records (TRL's formats) turned into the score records ``vhtool score`` reads.

Each answer of a record becomes exactly the record a user would give ``vhtool score`` for that text, so its
score is ``vhtool score``'s by construction (same preparation, same engine):

============================================  ==========================================================
preference record                             score record of each answer
============================================  ==========================================================
standard: ``prompt``, ``chosen`` strings      ``{"prompt": prompt, "completion": answer}`` (``--join``)
conversational: lists of messages             ``{"prompt": prompt, "completion": answer}`` (chat template)
implicit prompt, strings                      ``{"text": answer}``
implicit prompt, lists of messages            ``{"prompt": answer[:-1], "completion": answer[-1:]}``
============================================  ==========================================================

``rejected`` may be a list of answers (best-of-N): the record is correct when ``chosen`` beats every one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vhtool.errors import InputError

DEFAULT_SUBSET_FIELD = "subset"


@dataclass(frozen=True)
class Pair:
    """One preference record, as score records.

    Attributes:
        chosen: the chosen answer's score record.
        rejected: the rejected answers' score records (one, or N for best-of-N).
        best_of_n: ``rejected`` was given as a list (the output then lists its scores).
        subset: the record's group, or ``None``.
        kind: ``standard``, ``conversational``, ``implicit`` or ``implicit-conversational``.
    """

    chosen: dict[str, Any]
    rejected: tuple[dict[str, Any], ...]
    best_of_n: bool
    subset: str | None
    kind: str

    @property
    def answers(self) -> tuple[dict[str, Any], ...]:
        """The chosen answer's record, then the rejected ones'."""
        return (self.chosen, *self.rejected)


def is_messages(value: Any) -> bool:
    """True for a non-empty list of ``{"role", "content"}`` messages (one conversational answer)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def answer_label(position: int, *, best_of_n: bool) -> str:
    """How a message names an answer: ``chosen``, ``rejected`` or ``rejected[k]``."""
    if position == 0:
        return "chosen"
    return f"rejected[{position - 1}]" if best_of_n else "rejected"


def parse_pair(doc: Any, *, subset_field: str = DEFAULT_SUBSET_FIELD) -> Pair:
    """Reads one preference record.

    Args:
        doc: the record (a JSON object).
        subset_field: the field naming the record's group (absent or null: no group).

    Raises:
        InputError: not a preference record (the message says what is wrong).
    """
    if not isinstance(doc, dict):
        raise InputError(f"expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in ("chosen", "rejected") if doc.get(k) is None]
    if missing:
        raise InputError(f"no {' or '.join(missing)} field (a preference record has chosen and rejected)")
    chosen = doc["chosen"]
    rejected_raw = doc["rejected"]
    if isinstance(rejected_raw, str) or is_messages(rejected_raw):
        rejected, best_of_n = [rejected_raw], False
    elif isinstance(rejected_raw, list):
        if not rejected_raw:
            raise InputError("rejected is an empty list; give at least one rejected answer")
        rejected, best_of_n = list(rejected_raw), True
    else:
        raise InputError(
            f"rejected must be a string, a list of messages or a list of answers, got {type(rejected_raw).__name__}"
        )
    answers = [chosen, *rejected]
    for k, a in enumerate(answers):
        if not (isinstance(a, str) or is_messages(a)):
            raise InputError(
                f"{answer_label(k, best_of_n=best_of_n)} must be a string or a list of {{role, content}} messages"
            )
    prompt = doc.get("prompt")
    conversational = [is_messages(a) for a in answers]
    if prompt is None:
        if any(conversational) and not all(conversational):
            raise InputError("chosen and rejected must be all strings or all lists of messages")
        if all(conversational):
            records = [{"prompt": a[:-1], "completion": a[-1:]} for a in answers]
            kind = "implicit-conversational"
        else:
            records = [{"text": a} for a in answers]
            kind = "implicit"
    else:
        if not (isinstance(prompt, str) or is_messages(prompt)):
            raise InputError("prompt must be a string or a list of {role, content} messages")
        records = [{"prompt": prompt, "completion": a} for a in answers]
        kind = "conversational" if is_messages(prompt) or any(conversational) else "standard"
    return Pair(
        chosen=records[0],
        rejected=tuple(records[1:]),
        best_of_n=best_of_n,
        subset=_subset(doc, subset_field),
        kind=kind,
    )


def _subset(doc: dict[str, Any], field_name: str) -> str | None:
    value = doc.get(field_name)
    if value is None:
        return None
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    raise InputError(f"{field_name} must be a string or a number, got {type(value).__name__}")


__all__ = ["DEFAULT_SUBSET_FIELD", "Pair", "answer_label", "is_messages", "parse_pair"]
