"""Where records come from: :class:`InputSpec` (a file, a stream or texts), read lazily as :class:`InputItem`\\ s.

The format (JSONL or plain text) is decided by the file's suffix, else by the first non-blank line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vhtool.errors import InputError, VhtoolError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text")


@dataclass(frozen=True)
class InputItem:
    """One input record as read: its 0-based ``index``, 1-based ``line``, and payload (or a read error)."""

    index: int
    line: int
    payload: Any
    error: str | None = None


@dataclass(frozen=True)
class InputSpec:
    """Where records come from: a file (``path``), a text stream (``stream``, e.g. stdin), or ``texts``.

    Format (``ScoreOptions.input_format="auto"``): a file ending in ``.jsonl``/``.json``/``.ndjson`` is
    JSONL, one ending in ``.txt``/``.text`` is plain text; otherwise (and for a stream) the first
    non-blank line decides: a JSON object means JSONL, anything else plain text. In JSONL, blank lines
    are not records; in plain text every line is one record (an empty line is an empty text).
    """

    path: Path | None = None
    stream: TextIO | None = None
    texts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.path, self.stream, self.texts))
        if given != 1:
            raise InputError("give exactly one input: --input FILE, --input - (stdin), or --text (repeatable).")

    @property
    def rereadable(self) -> bool:
        return self.stream is None

    def label(self) -> str:
        if self.path is not None:
            return str(self.path)
        return "stdin" if self.stream is not None else "--text"

    def where(self, line: int) -> str:
        """Where record ``line`` is, for a message: ``data.jsonl: line 3``, ``stdin: line 3``, or ``--text 3``
        (the third ``--text``: an argument has no line)."""
        return f"--text {line}" if self.texts is not None else f"{self.label()}: line {line}"


def _sniff(first: str | None) -> str:
    """JSONL when the first non-empty line is a JSON object or array (an array line is then a bad record,
    never scored as the text ``[...]``); plain text otherwise (a line like ``42`` or ``"hi"`` is text)."""
    if first is None:
        return "text"
    try:
        return "jsonl" if isinstance(json.loads(first), (dict, list)) else "text"
    except (ValueError, RecursionError):
        return "text"


def _numbered_lines(spec: InputSpec) -> Iterator[tuple[int, str]]:
    if spec.path is not None:
        with open(spec.path, encoding="utf-8", newline="") as fh:
            for n, raw in enumerate(fh, 1):
                yield n, raw.rstrip("\r\n")
    else:
        assert spec.stream is not None
        for n, raw in enumerate(spec.stream, 1):
            yield n, raw.rstrip("\r\n")


def read_inputs(spec: InputSpec, input_format: str = "auto") -> tuple[str, Iterator[InputItem]]:
    """Opens ``spec`` and returns ``(format, items)``; items stream lazily, in input order.

    Raises:
        InputError: the file does not exist, is a directory, or is not UTF-8 text.
    """
    if spec.texts is not None:
        texts = spec.texts
        return "text", (InputItem(i, i + 1, t) for i, t in enumerate(texts))
    if spec.path is not None:
        if not spec.path.exists():
            raise InputError(f"{spec.path}: no such input file.")
        if spec.path.is_dir():
            raise InputError(f"{spec.path}: is a directory, not an input file.")
    lines = _numbered_lines(spec)
    fmt = input_format
    buffered: list[tuple[int, str]] = []
    if fmt == "auto" and spec.path is not None and spec.path.suffix.lower() in JSONL_SUFFIXES:
        fmt = "jsonl"
    elif fmt == "auto" and spec.path is not None and spec.path.suffix.lower() in TEXT_SUFFIXES:
        fmt = "text"
    elif fmt == "auto":
        first: str | None = None
        try:
            for n, line in lines:
                buffered.append((n, line))
                if line.strip():
                    first = line
                    break
        except UnicodeDecodeError as exc:
            raise InputError(f"{spec.label()}: not UTF-8 text ({exc.reason}).") from None
        fmt = _sniff(first)
    return fmt, _items(spec, fmt, buffered, lines)


def _items(
    spec: InputSpec, fmt: str, buffered: list[tuple[int, str]], rest: Iterator[tuple[int, str]]
) -> Iterator[InputItem]:
    def all_lines() -> Iterator[tuple[int, str]]:
        yield from buffered
        try:
            yield from rest
        except UnicodeDecodeError as exc:
            raise InputError(f"{spec.label()}: not UTF-8 text ({exc.reason}).") from None

    index = 0
    for n, line in all_lines():
        if fmt == "text":
            yield InputItem(index, n, line)
            index += 1
            continue
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            yield InputItem(index, n, None, f"invalid JSON ({exc})")
        else:
            if isinstance(doc, dict):
                yield InputItem(index, n, doc)
            else:
                yield InputItem(index, n, None, f"expected a JSON object, got {type(doc).__name__}")
        index += 1


def record_shape(payload: Any) -> tuple[str, Any]:
    """What a record asks to score, checked without a tokenizer: ``(kind, value)``.

    ``kind`` is ``text`` (value the string), ``ids`` (value the list of ints), or ``pair`` (value the
    ``(prompt, completion)``, each a string or a list of chat messages). Everything here is checked before
    a model loads; what needs the model (the vocabulary, the length, the join) is checked by the preparer.

    Raises:
        InputError: the record's reason, as the user should read it after ``line N:``.
    """
    if isinstance(payload, str):
        if not payload.strip():
            raise InputError("empty text")
        return "text", payload
    if not isinstance(payload, dict):
        raise InputError(f"expected a JSON object, got {type(payload).__name__}")
    present = [k for k in ("text", "prompt", "completion", "input_ids") if k in payload]
    kinds = {"prompt" if k == "completion" else k for k in present}
    if not kinds:
        raise InputError("no text, prompt + completion, or input_ids field")
    if len(kinds) > 1:
        raise InputError(
            f"ambiguous record: it has {', '.join(present)}; give exactly one of text, prompt + completion "
            "or input_ids"
        )
    field_name = kinds.pop()
    if field_name == "input_ids":
        ids = payload["input_ids"]
        if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
            raise InputError("input_ids must be a list of integers")
        if not ids:
            raise InputError("empty input_ids")
        return "ids", ids
    if field_name == "text":
        text = payload["text"]
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError("empty text")
        return "text", text
    if "prompt" not in payload or "completion" not in payload:
        missing = "completion" if "prompt" in payload else "prompt"
        raise InputError(f"has {'prompt' if missing == 'completion' else 'completion'} but no {missing}")
    for name, part in (("prompt", payload["prompt"]), ("completion", payload["completion"])):
        if not isinstance(part, str) and not is_chat(part):
            raise InputError(f"{name} must be a string or a list of chat messages")
    return "pair", (payload["prompt"], payload["completion"])


def is_chat(part: Any) -> bool:
    """Whether ``part`` is a list of chat messages (``{"role", "content"}`` objects)."""
    return isinstance(part, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in part)


def looks_like_jsonl(line: str) -> bool:
    """Whether a line of a plain-text input parses as a JSON object (JSONL read as text by its suffix)."""
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def count_records(spec: InputSpec, input_format: str = "auto") -> int | None:
    """How many records ``spec`` holds, for a progress total: ``None`` for a stream (it can be read once only).

    A count of lines without parsing them: every line of a text input, the non-blank lines of a JSONL one.
    Unreadable files give ``None``; :func:`read_inputs` reports them properly.
    """
    if spec.texts is not None:
        return len(spec.texts)
    if spec.path is None:
        return None
    try:
        fmt, _ = read_inputs(spec, input_format)
        with open(spec.path, "rb") as fh:
            if fmt == "text":
                return sum(1 for _ in fh)
            return sum(1 for line in fh if line.strip())
    except (OSError, VhtoolError):
        return None


__all__ = [
    "JSONL_SUFFIXES",
    "TEXT_SUFFIXES",
    "InputItem",
    "InputSpec",
    "count_records",
    "is_chat",
    "looks_like_jsonl",
    "read_inputs",
    "record_shape",
]
