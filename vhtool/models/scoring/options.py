"""What ``vhtool score`` is asked to do: :class:`ScoreOptions` (validated on construction) and ``--max-memory``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vhtool.choices import DEVICE_MAPS, DEVICES, DTYPES, FORMATS, HEADS, JOIN_MODES, ON_ERROR, READOUTS  # noqa: F401
from vhtool.errors import InputError

DEFAULT_WINDOW = 4096
DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class ScoreOptions:
    """What to score and how. Validated on construction (bad values raise :class:`InputError`).

    Attributes:
        head: ``"value"``, ``"reward"``, or ``None`` (reward when an adapter is attached, else value).
        per_token: also return the head's output at every real token.
        batch_size: at most this many records per batch (``None``: only the token budget limits).
        max_batch_tokens: at most this many *padded* tokens per batch (a longer record goes alone).
        max_length: truncate longer records to this many tokens (flagged ``truncated``); ``None``: a record
            longer than the model's positions is an error.
        join: how ``prompt`` + ``completion`` become one text: ``"chat"`` (the tokenizer's chat template,
            user/assistant) or ``"concat"``; ``None``: chat when the tokenizer has a template, else concat.
        dtype: compute dtype (``float32``, ``bfloat16``, ``float16``, or ``auto`` = the checkpoint's).
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
        on_error: ``fail`` (stop at the first bad record) or ``skip`` (report it and go on).
        input_format: ``auto``, ``jsonl`` or ``text``.
        window: records read (and sorted) at a time.
        device_map: accelerate's big-model placement (``auto``, ``balanced``, ``balanced_low_0`` or
            ``sequential``): the model is split over the accelerators and offloaded to CPU memory or disk as
            needed; ``device`` is then ignored. ``None``: the whole model on ``device``.
        max_memory: with ``device_map``, a cap per device: ``cpu=200MB,0=20GiB`` or a JSON object
            (see :func:`parse_max_memory`).
        offload_folder: with ``device_map``, where weights offloaded to disk go.
        allow_missing: score a checkpoint whose backbone tensors are not all in its files (transformers
            initialises the missing ones at random); refused by default.
        readout: where a sequence's score is read (``last``, ``last-non-pad``, ``eos``, ``before-eos``); ``None``:
            the rule ``vhtool.json`` records, else the checkpoint convention's (see ``docs/conventions.md``).
        normalize: apply the normalisation the checkpoint records (OpenRLHF's ``normalize_reward``/``mean``/``std``).
        allow_pickle: read a framework's ``pytorch_model.bin`` (DeepSpeed-Chat, trlx) with the weights-only loader.
    """

    head: str | None = None
    per_token: bool = False
    batch_size: int | None = None
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_length: int | None = None
    join: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    on_error: str = "fail"
    input_format: str = "auto"
    window: int = DEFAULT_WINDOW
    device_map: str | None = None
    max_memory: str | None = None
    offload_folder: str | None = None
    allow_missing: bool = False
    readout: str | None = None
    normalize: bool = True
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        choices = {
            "head": (self.head, (None, *HEADS)),
            "join": (self.join, (None, *JOIN_MODES)),
            "dtype": (self.dtype, DTYPES),
            "device": (self.device, DEVICES),
            "on_error": (self.on_error, ON_ERROR),
            "input_format": (self.input_format, FORMATS),
            "device_map": (self.device_map, (None, *DEVICE_MAPS)),
            "readout": (self.readout, (None, *READOUTS)),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                shown = ", ".join(a for a in allowed if a is not None)
                raise InputError(f"{name.replace('_', '-')} must be one of {shown}, got {value!r}.")
        for name, number in (
            ("batch-size", self.batch_size),
            ("max-batch-tokens", self.max_batch_tokens),
            ("max-length", self.max_length),
            ("window", self.window),
        ):
            if number is not None and (not isinstance(number, int) or number < 1):
                raise InputError(f"--{name} must be a positive integer, got {number!r}.")
        if self.device_map is None and (self.max_memory is not None or self.offload_folder is not None):
            given = "--max-memory" if self.max_memory is not None else "--offload-folder"
            raise InputError(f"{given} applies to big-model loading only; add --device-map auto.")
        if self.max_memory is not None:
            parse_max_memory(self.max_memory)


def parse_max_memory(text: str) -> dict[int | str, int]:
    """Parses a ``--max-memory`` value into accelerate's ``max_memory`` (device -> bytes).

    Args:
        text: ``DEVICE=SIZE`` pairs separated by commas (``cpu=200MB,0=20GiB``) or a JSON object
            (``{"cpu": "200MB", "0": "20GiB"}``). A device is ``cpu``, ``mps``, a GPU number or ``cuda:N``; a size
            is a number of bytes or a number with a unit (``KB``/``MB``/``GB`` are powers of 1000,
            ``KiB``/``MiB``/``GiB`` powers of 1024).

    Raises:
        InputError: the text is not of that form.
    """
    hint = "give DEVICE=SIZE pairs, e.g. cpu=200MB,0=20GiB, or a JSON object"
    body = text.strip()
    pairs: list[tuple[Any, Any]] = []
    if body.startswith("{"):
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise InputError(f"--max-memory: not valid JSON ({exc}); {hint}.") from None
        pairs = list(doc.items())
    else:
        for part in body.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise InputError(f"--max-memory: {part.strip()!r} is not DEVICE=SIZE; {hint}.")
            pairs.append((key, value.strip()))
    if not pairs:
        raise InputError(f"--max-memory is empty; {hint}.")
    out: dict[int | str, int] = {}
    for key, value in pairs:
        name = str(key).strip().lower().removeprefix("cuda:")
        device: int | str = int(name) if name.isdigit() else name
        if isinstance(device, str) and device not in ("cpu", "mps"):
            raise InputError(f"--max-memory: unknown device {str(key)!r}; use cpu, mps, a GPU number or cuda:N.")
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                size = value
            elif isinstance(value, str) and value.strip().isdigit():
                size = int(value)
            elif isinstance(value, str):
                size = _size(value)
            else:
                raise ValueError(value)
        except ValueError:
            raise InputError(f"--max-memory: {value!r} is not a size (e.g. 200MB, 20GiB, 1000000).") from None
        if size <= 0:
            raise InputError(f"--max-memory: the size for {str(key)!r} must be positive.")
        out[device] = size
    return out


#: ``--max-memory`` units: the decimal ones are powers of 1000, the binary ones of 1024 (as accelerate reads them).
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def _size(text: str) -> int:
    """``200MB`` -> 200000000, ``1.5GiB`` -> 1610612736 (no accelerate import: options are checked before torch).

    Raises:
        ValueError: not a number with one of the units of :data:`_UNITS`.
    """
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if found is None or found.group(2).upper() not in _UNITS:
        raise ValueError(text)
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "DEFAULT_WINDOW",
    "DEVICES",
    "DEVICE_MAPS",
    "DTYPES",
    "FORMATS",
    "HEADS",
    "JOIN_MODES",
    "ON_ERROR",
    "ScoreOptions",
    "parse_max_memory",
]
