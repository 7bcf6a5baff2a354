"""Records to token ids: each record's text (or prompt + completion, or ``input_ids``) validated and tokenised.

A window of records is tokenised in one call of the fast tokenizer. A record that cannot be scored gets an
``error`` (its reason) instead of ids; what happens then (fail or skip) is the run's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vhtool.errors import InputError
from vhtool.models.scoring.inputs import InputItem, is_chat, record_shape


@dataclass
class Prepared:
    """A record turned into token ids (or an error)."""

    item: InputItem
    ids: list[int] | None = None
    truncated: bool = False
    joined: bool = False
    error: str | None = None


@dataclass(frozen=True)
class RecordPreparer:
    """Turns records into token ids for one loaded model.

    Attributes:
        tokenizer: the checkpoint's tokenizer, or ``None`` (only ``input_ids`` records then).
        join: ``chat`` or ``concat``: how prompt + completion become one text.
        vocab_rows: ``input_ids`` must be below this.
        max_length: truncate longer records to this many tokens; ``None``: longer than ``max_positions`` is an error.
        max_positions: the model's positions (``None``: unknown, no limit).
        truncation_side: which end ``max_length`` cuts (``left`` or ``right``).
    """

    tokenizer: Any
    join: str
    vocab_rows: int
    max_length: int | None
    max_positions: int | None
    truncation_side: str = "right"

    def prepare(self, items: Sequence[InputItem]) -> list[Prepared]:
        """Turns a window of records into token ids (one tokenizer call for all texts), validating each."""
        prepared = [Prepared(item) for item in items]
        texts: list[tuple[int, str, bool]] = []  # (position, text, add_special_tokens)
        for k, p in enumerate(prepared):
            it = p.item
            if it.error is not None:
                p.error = it.error
                continue
            try:
                kind, value = self._extract(it.payload)
            except InputError as exc:
                p.error = str(exc)
                continue
            if kind == "ids":
                p.ids = value
            elif self.tokenizer is None:
                p.error = "the checkpoint has no tokenizer; give pre-tokenised input_ids"
            else:
                p.joined = kind != "text"
                texts.append((k, value, kind != "chat"))
        for special in (True, False):
            group = [(k, t) for k, t, s in texts if s is special]
            if group:
                enc = self.tokenizer([t for _, t in group], add_special_tokens=special)["input_ids"]
                for (k, _), ids in zip(group, enc, strict=True):
                    prepared[k].ids = list(ids)
        for p in prepared:
            if p.error is None and p.ids is not None:
                self._check_length(p)
        return prepared

    def _extract(self, payload: Any) -> tuple[str, Any]:
        """``(kind, value)``: kind ``text``/``concat``/``chat`` (value a string) or ``ids`` (a list of ints)."""
        kind, value = record_shape(payload)  # what needs no model, checked before one loads too
        if kind == "ids":
            bad = [x for x in value if not 0 <= x < self.vocab_rows]
            if bad:
                raise InputError(f"input_ids has id {bad[0]}, outside the model's vocabulary [0, {self.vocab_rows})")
            return "ids", value
        if kind == "text":
            return "text", value
        prompt, completion = value
        if self.join == "concat":  # as given, no separator added (as TRL does): the data carries its spaces
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise InputError("--join concat needs prompt and completion strings")
            if not (prompt + completion).strip():
                raise InputError("empty text (prompt and completion are both empty)")
            return "concat", prompt + completion
        messages = _messages(prompt, "user") + _messages(completion, "assistant")
        if not any(str(m.get("content", "")).strip() for m in messages):
            raise InputError("empty text (prompt and completion are both empty)")
        try:
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as exc:  # a template may raise anything (jinja errors, its own exceptions)
            raise InputError(f"the chat template failed on this record ({type(exc).__name__}: {exc})") from None
        return "chat", rendered

    def _check_length(self, p: Prepared) -> None:
        assert p.ids is not None
        n = len(p.ids)
        if n == 0:
            p.error = "the text tokenises to no tokens"
            return
        limit = self.max_length
        if limit is not None:
            if n > limit:
                p.ids = p.ids[-limit:] if self.truncation_side == "left" else p.ids[:limit]
                p.truncated = True
            return
        if self.max_positions is not None and n > self.max_positions:
            p.error = (
                f"{n} tokens, more than the model's {self.max_positions} positions; pass --max-length to truncate"
            )

    # ------------------------------------------------------------------ one batch


def _messages(part: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(part, str):
        return [{"role": role, "content": part}]
    if is_chat(part):
        return list(part)
    raise InputError(f"{'prompt' if role == 'user' else 'completion'} must be a string or a list of chat messages")


__all__ = ["Prepared", "RecordPreparer"]
