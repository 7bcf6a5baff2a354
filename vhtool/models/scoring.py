"""The scoring engine behind ``vhtool score``: fast, order-preserving batch scoring of a data set.

How it is fast:

* the input is **streamed** in windows of ``window`` records (default 4096): memory is constant in
  the number of records; each window is tokenised in one call of the fast tokenizer;
* inside a window the records are **sorted by length** (longest first) and packed into batches under
  a padded-token budget (``max_batch_tokens``, and at most ``batch_size`` records), a record joining a
  batch only when it is padded by at most 10% of the batch width, so little compute goes to padding;
  results are put back in input order and written as each window finishes;
* right-padded batches run without an attention mask: in a causal LM a real token only attends to
  earlier, real positions, so the plain causal kernels give its output exactly (left padding, the
  tokenizer's choice for e.g. Llama, passes the mask and mask-derived ``position_ids``);
* only the **backbone** runs (``getattr(model, model.base_model_prefix)``, e.g. ``GPT2Model``): the
  LM head's logits (``batch x seq x vocab``; ~30% of GPT-2's forward FLOPs) are never computed. At load
  time a short self-check compares the backbone's output with the hidden state vhtool's own forward
  gives the value head (the LM head's input); if they differ for some architecture the engine falls
  back to the full forward and says so;
* ``torch.inference_mode``, no KV cache, a compute dtype of the user's choice.

Scores: ``value`` is the value head at each sequence's last non-padding token (what
``AutoModelForCausalLMWithValueHead.forward`` gives there); ``reward`` is the attached reward
adapter's score head on the backbone run with the adapter active (what ``compute_reward_score``
gives there). Only causal LMs are scored: for an encoder-decoder there is no single honest answer
to "the score of a text" (what goes to the decoder?), so those are refused.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vhtool.checkpoint.atomic import AtomicFile
from vhtool.errors import InputError, VhtoolError

HEADS = ("reward", "value")
JOIN_MODES = ("chat", "concat")
DTYPES = ("float32", "bfloat16", "float16", "auto")
DEVICES = ("cpu", "cuda", "auto")
ON_ERROR = ("fail", "skip")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
FORMATS = ("auto", "jsonl", "text")
DEFAULT_WINDOW = 4096
DEFAULT_MAX_BATCH_TOKENS = 16384
MAX_PADDING = 0.1
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_MAX_POSITION_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


# ---------------------------------------------------------------------------------------------- options & results
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

    def __post_init__(self) -> None:
        choices = {
            "head": (self.head, (None, *HEADS)),
            "join": (self.join, (None, *JOIN_MODES)),
            "dtype": (self.dtype, DTYPES),
            "device": (self.device, DEVICES),
            "on_error": (self.on_error, ON_ERROR),
            "input_format": (self.input_format, FORMATS),
            "device_map": (self.device_map, (None, *DEVICE_MAPS)),
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
    from accelerate.utils import convert_file_size_to_int

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
                size = int(convert_file_size_to_int(value.strip()))
            else:
                raise ValueError(value)
        except ValueError:
            raise InputError(f"--max-memory: {value!r} is not a size (e.g. 200MB, 20GiB, 1000000).") from None
        if size <= 0:
            raise InputError(f"--max-memory: the size for {str(key)!r} must be positive.")
        out[device] = size
    return out


@dataclass(frozen=True)
class ScoredRecord:
    """One scored input record. ``score`` is ``nan``/``inf`` when the model produced that."""

    index: int
    score: float
    tokens: int
    truncated: bool = False
    values: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSONL line: ``index``, ``score``, ``tokens`` (+ ``truncated``, ``values``, ``nonfinite``).

        JSON has no NaN/Infinity: a non-finite score is written as ``null`` with ``"nonfinite": "nan"``
        (or ``"inf"``/``"-inf"``); non-finite per-token values are written as ``null``.
        """
        doc: dict[str, Any] = {"index": self.index, "score": _json_float(self.score), "tokens": self.tokens}
        if not math.isfinite(self.score):
            doc["nonfinite"] = str(self.score)
        if self.truncated:
            doc["truncated"] = True
        if self.values is not None:
            doc["values"] = [_json_float(v) for v in self.values]
        return doc


class BadRecordError(InputError):
    """A record that cannot be scored, with ``on_error="fail"`` (exit 2); the message names its line."""

    def __init__(self, message: str, *, index: int, line: int) -> None:
        super().__init__(message)
        self.index = index
        self.line = line


@dataclass(frozen=True)
class SkippedRecord:
    """A record that could not be scored (``--on-error skip``)."""

    index: int
    line: int
    reason: str

    def message(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class ScoreSummary:
    """Statistics of one scoring run (over the finite scores) and what was used to compute them."""

    checkpoint: str
    count: int
    skipped: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    nan_count: int
    inf_count: int
    tokens: int
    padded_tokens: int
    truncated: int
    batches: int
    seconds: float
    load_seconds: float
    tokens_per_s: float
    records_per_s: float
    head: str
    head_reason: str
    join: str
    joined_records: int
    input_format: str
    dtype: str
    device: str
    padding_side: str
    forward: str
    output: str | None = None
    notes: tuple[str, ...] = ()
    ranks: int = 1

    @property
    def padding_fraction(self) -> float:
        return 0.0 if self.padded_tokens == 0 else 1.0 - self.tokens / self.padded_tokens

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-able dict (statistics are ``null`` when nothing finite was scored)."""
        return {
            "checkpoint": self.checkpoint,
            "count": self.count,
            "skipped": self.skipped,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "nan_count": self.nan_count,
            "inf_count": self.inf_count,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "padding_fraction": round(self.padding_fraction, 4),
            "truncated": self.truncated,
            "batches": self.batches,
            "seconds": round(self.seconds, 4),
            "load_seconds": round(self.load_seconds, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "records_per_s": round(self.records_per_s, 2),
            "head": self.head,
            "head_reason": self.head_reason,
            "join": self.join,
            "joined_records": self.joined_records,
            "input_format": self.input_format,
            "dtype": self.dtype,
            "device": self.device,
            "padding_side": self.padding_side,
            "forward": self.forward,
            "output": self.output,
            "ranks": self.ranks,
            "notes": list(self.notes),
        }


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------- input reading
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


def _sniff(first: str | None) -> str:
    if first is None:
        return "text"
    try:
        return "jsonl" if isinstance(json.loads(first), dict) else "text"
    except ValueError:
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


# ---------------------------------------------------------------------------------------------- the loaded model
def _max_positions(config: Any) -> int | None:
    for attr in _MAX_POSITION_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class _Prepared:
    """A record turned into token ids (or an error)."""

    item: InputItem
    ids: list[int] | None = None
    truncated: bool = False
    joined: bool = False
    error: str | None = None


class Scorer:
    """A checkpoint loaded for scoring: tokenizer, model, the chosen head and the fast backbone path.

    Args:
        checkpoint: a vhtool (or TRL) value-head checkpoint: local directory, Hub id or ``builtin:*``.
        options: see :class:`ScoreOptions`.
        local_rank: under torchrun, this process's GPU (``LOCAL_RANK``): CUDA scoring uses ``cuda:<local_rank>``.
    """

    def __init__(
        self, checkpoint: str | os.PathLike[str], *, options: ScoreOptions, local_rank: int | None = None
    ) -> None:
        import torch

        t0 = time.perf_counter()
        self.checkpoint = str(checkpoint)
        self.options = options
        self.notes: list[str] = []
        self.device = "cpu" if options.device_map is not None else self._pick_device(options.device)
        if self.device == "cuda" and local_rank is not None:
            torch.cuda.set_device(local_rank)
            self.device = f"cuda:{local_rank}"
        self._load(torch)
        self.load_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _pick_device(device: str) -> str:
        import torch

        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available here; use --device cpu (or auto).")
        return device

    def _load(self, torch: Any) -> None:
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from vhtool.models.loading import resolve_pretrained
        from vhtool.models.value_head import AutoModelForCausalLMWithValueHead

        resolved = resolve_pretrained(self.checkpoint)
        try:
            config = AutoConfig.from_pretrained(resolved.load_from)
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.checkpoint}: not a model checkpoint ({exc}).") from None
        if getattr(config, "is_encoder_decoder", False):
            raise InputError(
                f"{self.checkpoint} is an encoder-decoder ({config.model_type}); `vhtool score` scores causal LMs "
                "only (for a seq2seq model it is not defined what the decoder would read). Score the decoder "
                "outputs with the Python API instead."
            )
        self.max_positions = _max_positions(config)
        limit = self.options.max_length
        if limit is not None and self.max_positions is not None and limit > self.max_positions:
            raise InputError(
                f"--max-length {limit} is more than the model's {self.max_positions} "
                f"positions; use --max-length {self.max_positions} or less."
            )

        self.tokenizer: Any = None
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            try:
                if resolved.local_dir is not None and not any(
                    (resolved.local_dir / f).is_file() for f in _TOKENIZER_FILES
                ):
                    raise OSError("no tokenizer files")
                tok = AutoTokenizer.from_pretrained(resolved.load_from)
                # transformers may build an empty tokenizer from the config alone: that is no tokenizer.
                self.tokenizer = tok if len(tok) > len(tok.all_special_ids) else None
            except (OSError, ValueError, TypeError):
                pass
            if self.tokenizer is None:
                self.notes.append(
                    "the checkpoint has no tokenizer: only pre-tokenised input_ids records can be scored."
                )
            dtype = self._torch_dtype(torch, config)
            load_kwargs: dict[str, Any] = {"dtype": dtype}
            if self.options.device_map is not None:
                load_kwargs["device_map"] = self.options.device_map
                if self.options.max_memory is not None:
                    load_kwargs["max_memory"] = parse_max_memory(self.options.max_memory)
                if self.options.offload_folder is not None:
                    load_kwargs["offload_folder"] = self.options.offload_folder
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    model = AutoModelForCausalLMWithValueHead.from_pretrained(self.checkpoint, **load_kwargs)
                except (ValueError, ImportError, RuntimeError, OSError) as exc:
                    # under --device-map, accelerate reports a device or folder it cannot use this way
                    if self.options.device_map is None or isinstance(exc, (VhtoolError, torch.OutOfMemoryError)):
                        raise
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    if isinstance(exc, OSError) and exc.filename is not None:
                        first = f"{exc.filename}: {exc.strerror or first}"
                    hint = " Pass --offload-folder DIR." if "offload_folder" in first.lower() else ""
                    raise InputError(f"--device-map {self.options.device_map}: {first}{hint}") from None
        finally:
            hf_logging.set_verbosity(previous)
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        model.eval()
        if self.options.device_map is None:
            model.to(self.device)
        else:
            self._place_mapped(model)
        self.model = model
        self.compute_dtype = str(next(model.pretrained_model.parameters()).dtype).replace("torch.", "")

        tok = self.tokenizer
        self.padding_side = getattr(tok, "padding_side", "right") if tok is not None else "right"
        self.truncation_side = getattr(tok, "truncation_side", "right") if tok is not None else "right"
        pad_id = getattr(tok, "pad_token_id", None) if tok is not None else None
        if tok is not None and pad_id is None:
            if tok.eos_token is None:
                raise InputError(f"{self.checkpoint}: the tokenizer has neither a pad nor an eos token.")
            tok.pad_token = tok.eos_token
            pad_id = tok.pad_token_id
            self.notes.append(f"the tokenizer has no pad token; using eos ({tok.eos_token!r}) for padding.")
        if pad_id is None:
            pad_id = getattr(config, "pad_token_id", None) or getattr(config, "eos_token_id", None) or 0
            if isinstance(pad_id, list):
                pad_id = pad_id[0]
        self.pad_id = int(pad_id)  # padding positions are masked out: any valid id does
        self.vocab_rows = int(model.pretrained_model.get_input_embeddings().num_embeddings)

        has_adapter = bool(getattr(model, "supports_rm_adapter", False)) and hasattr(model, "score")
        head = self.options.head
        if head is None:
            head = "reward" if has_adapter else "value"
            self.head_reason = "default: reward adapter attached" if has_adapter else "default: no reward adapter"
        else:
            self.head_reason = "--head"
        if head == "reward" and not has_adapter:
            raise InputError(
                f"{self.checkpoint} has no reward adapter; attach one with `vhtool attach-reward-adapter` or use "
                "--head value."
            )
        if head == "value" and not model.v_head_loaded:
            raise InputError(
                f"{self.checkpoint} has no value-head weights (v_head.*): its values would come from a random head. "
                "Create a value-head checkpoint with `vhtool init`"
                + (", or use --head reward." if has_adapter else ".")
            )
        if head == "reward" and self.options.device_map is not None:
            # PEFT copies adapter weights into the loaded parameters; an offloaded layer's are on the meta
            # device, so the copy is a silent no-op and the scores would be garbage: refuse instead.
            tag = f".{getattr(model, 'rm_adapter_name', None) or ''}."
            if any(tag in n and p.device.type == "meta" for n, p in model.pretrained_model.named_parameters()):
                raise InputError(
                    f"--device-map {self.options.device_map} offloaded layers that the reward adapter modifies, and "
                    "PEFT cannot load adapter weights into offloaded layers; give the model more --max-memory (no "
                    "offload), score --head value, or score without --device-map."
                )
        for w in caught:
            text = str(w.message)
            if "no value-head weights" not in text:
                self.notes.append(text)
        self.head = head

        if self.options.join is not None:
            self.join = self.options.join
        else:
            self.join = "chat" if tok is not None and getattr(tok, "chat_template", None) else "concat"
        if self.join == "chat" and (tok is None or not getattr(tok, "chat_template", None)):
            raise InputError(
                f"--join chat: the tokenizer of {self.checkpoint} has no chat template; use --join concat."
            )

        self._setup_forward(torch)

    def _place_mapped(self, model: Any) -> None:
        """Under ``device_map``: inputs go to accelerate's main device; the heads sit where the hidden state is."""
        device_map = getattr(model.pretrained_model, "hf_device_map", None)
        if not device_map:  # everything fitted on one device: accelerate recorded no map
            self.device = str(next(model.pretrained_model.parameters()).device)
            self.notes.append(f"--device-map {self.options.device_map}: the whole model fits on {self.device}.")
            return
        names = {v: f"cuda:{v}" if isinstance(v, int) else str(v) for v in device_map.values()}
        self.device = next((n for n in names.values() if n not in ("cpu", "disk")), "cpu")
        head_device = model.v_head.summary.weight.device
        placed = ", ".join(sorted(set(names.values())))
        self.notes.append(
            f"--device-map {self.options.device_map}: the model is placed on {placed}; the heads run on {head_device}."
        )

    def _torch_dtype(self, torch: Any, config: Any) -> Any:
        name = self.options.dtype
        if name == "auto":
            stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            if isinstance(stored, str):
                name = stored.replace("torch.", "")
            elif stored is not None:
                return stored
            else:
                name = "float32"
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]

    # ------------------------------------------------------------------ the fast path and its self-check
    def _setup_forward(self, torch: Any) -> None:
        pm = self.model.pretrained_model
        inner = pm.get_base_model() if hasattr(pm, "get_base_model") else pm
        prefix = getattr(inner, "base_model_prefix", "") or ""
        backbone = getattr(inner, prefix, None) if prefix else None
        self.backbone: Any = backbone if isinstance(backbone, torch.nn.Module) and backbone is not inner else None
        params = inspect.signature(self.backbone.forward).parameters if self.backbone is not None else {}
        self._takes_positions = "position_ids" in params
        self._takes_use_cache = "use_cache" in params
        self.forward_kind = "backbone"
        if self.head == "reward":
            return  # reward.compute_reward_score runs the backbone (or, lacking one, the LM head's input) itself
        if self.backbone is None:
            self.forward_kind = "full"
            self.notes.append(f"{type(inner).__name__}: no backbone module found; running the full forward (slower).")
            return
        n = min(7, self.max_positions or 7)
        ids = torch.arange(n, device=self.device).unsqueeze(0) % self.vocab_rows
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            fast = self._head_outputs(ids, mask, kind="backbone")
            ref = self._head_outputs(ids, mask, kind="full")
        tol = 1e-4 if fast.dtype == torch.float32 and self.compute_dtype == "float32" else 2e-2
        if fast.shape != ref.shape or not torch.allclose(fast.float(), ref.float(), atol=tol, rtol=tol):
            self.forward_kind = "full"
            self.notes.append(
                f"{type(inner).__name__}: the backbone's output is not what the head reads in the full forward; "
                "running the full forward (slower)."
            )

    def _head_outputs(self, ids: Any, mask: Any, *, kind: str) -> Any:
        """Per-token head outputs ``(batch, seq)`` for the chosen head, by the fast (backbone) or full path."""
        import torch

        pos = None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)
        model = self.model
        if self.head == "reward":
            return self._reward_outputs(ids, mask, pos)
        if kind == "full":
            extra = {} if pos is None else {"position_ids": pos}
            _, _, value = model(input_ids=ids, attention_mask=mask, use_cache=False, **extra)
            return value
        hidden = self._backbone_hidden(ids, mask, pos)
        head_dev = model.v_head.summary.weight.device
        if hidden.device != head_dev:
            hidden = hidden.to(head_dev)
        out: torch.Tensor = model.v_head(hidden).squeeze(-1)
        return out

    def _backbone_hidden(self, ids: Any, mask: Any, pos: Any) -> Any:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self._takes_positions and pos is not None:
            kwargs["position_ids"] = pos
        if self._takes_use_cache:
            kwargs["use_cache"] = False
        out = self.backbone(**kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _reward_outputs(self, ids: Any, mask: Any, pos: Any) -> Any:
        """The reward adapter's per-token scores (reward.py switches the adapter on and runs the backbone only)."""
        from vhtool.models.reward import compute_reward_score

        kwargs = {"position_ids": pos} if self._takes_positions and pos is not None else {}
        return compute_reward_score(self.model, ids, mask, **kwargs)[..., 0]

    # ------------------------------------------------------------------ tokenisation
    def prepare(self, items: Sequence[InputItem]) -> list[_Prepared]:
        """Turns a window of records into token ids (one tokenizer call for all texts), validating each."""
        prepared = [_Prepared(item) for item in items]
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
        if isinstance(payload, str):
            if not payload.strip():
                raise InputError("empty text")
            return "text", payload
        assert isinstance(payload, dict)
        has = [k for k in ("input_ids", "text") if k in payload]
        if "prompt" in payload or "completion" in payload:
            has.append("prompt")
        if not has:
            raise InputError("no text, prompt + completion, or input_ids field")
        if len(has) > 1:
            shown = " and ".join("prompt + completion" if h == "prompt" else h for h in has)
            raise InputError(f"ambiguous record: it has {shown}; give exactly one of them")
        field_name = has[0]
        if field_name == "input_ids":
            ids = payload["input_ids"]
            if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
                raise InputError("input_ids must be a list of integers")
            if not ids:
                raise InputError("empty input_ids")
            bad = [x for x in ids if not 0 <= x < self.vocab_rows]
            if bad:
                raise InputError(f"input_ids has id {bad[0]}, outside the model's vocabulary [0, {self.vocab_rows})")
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
        prompt, completion = payload["prompt"], payload["completion"]
        if self.join == "concat":
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

    def _check_length(self, p: _Prepared) -> None:
        assert p.ids is not None
        n = len(p.ids)
        if n == 0:
            p.error = "the text tokenises to no tokens"
            return
        limit = self.options.max_length
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
    def score_batch(self, seqs: Sequence[list[int]]) -> tuple[list[float], list[list[float]] | None]:
        """Scores token sequences in one padded batch: the head at each last real token (and all tokens)."""
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            t = torch.tensor(s, dtype=torch.long)
            if self.padding_side == "left":
                ids[r, width - len(s) :] = t
                mask[r, width - len(s) :] = 1
            else:
                ids[r, : len(s)] = t
                mask[r, : len(s)] = 1
        ids = ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        from vhtool.models.reward import last_token_index

        # Right padding needs no attention mask in a causal LM: a real token only attends to positions before
        # it, all real, so the plain causal path (SDPA's is_causal kernels, no mask tensor) gives its output.
        needs_mask = self.padding_side == "left" and any(len(s) < width for s in seqs)
        with torch.inference_mode():
            out = self._head_outputs(ids, mask if needs_mask else None, kind=self.forward_kind).float()
            last = last_token_index(mask)
            scores = out[torch.arange(len(seqs), device=out.device), last.to(out.device)].cpu().tolist()
            values: list[list[float]] | None = None
            if self.options.per_token:
                rows = out.cpu()
                values = []
                for r, s in enumerate(seqs):
                    row = rows[r, width - len(s) :] if self.padding_side == "left" else rows[r, : len(s)]
                    values.append(row.tolist())
        return scores, values


def _messages(part: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(part, str):
        return [{"role": role, "content": part}]
    if isinstance(part, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in part):
        return list(part)
    raise InputError(f"{'prompt' if role == 'user' else 'completion'} must be a string or a list of chat messages")


# ---------------------------------------------------------------------------------------------- batching
def plan_batches(
    lengths: Sequence[int], *, max_batch_tokens: int, batch_size: int | None, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Groups positions into batches: longest first, each under ``max_batch_tokens`` padded tokens.

    Args:
        lengths: token count of each record.
        max_batch_tokens: budget of ``records x longest`` per batch; a record longer than it goes alone.
        batch_size: at most this many records per batch (``None``: no limit).
        max_padding: a record joins a batch only if it is padded by at most this fraction of the batch
            width; with few records spread over many lengths this keeps batches narrow instead of big.

    Returns:
        Lists of positions into ``lengths``; every position appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for k in order:
        n = lengths[k]  # descending: the batch's first record sets its width
        full = batch_size is not None and len(current) >= batch_size
        if current and (full or width * (len(current) + 1) > max_batch_tokens or n < width * (1 - max_padding)):
            batches.append(current)
            current = []
        if not current:
            width = n
        current.append(k)
    if current:
        batches.append(current)
    return batches


# ---------------------------------------------------------------------------------------------- the run
class _Stats:
    """Running statistics (Welford) over finite scores: constant memory in the number of records."""

    def __init__(self) -> None:
        self.count = 0
        self.finite = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.nan = 0
        self.inf = 0

    def add(self, x: float) -> None:
        self.count += 1
        if math.isnan(x):
            self.nan += 1
            return
        if math.isinf(x):
            self.inf += 1
            return
        self.finite += 1
        delta = x - self.mean
        self.mean += delta / self.finite
        self.m2 += delta * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)


def _windows(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    window: list[InputItem] = []
    for item in items:
        window.append(item)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _validate_all(scorer: Scorer, spec: InputSpec, options: ScoreOptions) -> None:
    """A first pass over a re-readable input: parses and tokenises everything, fails at the first bad record."""
    _, items = read_inputs(spec, options.input_format)
    for window in _windows(items, options.window):
        for p in scorer.prepare(window):
            if p.error is not None:
                raise _bad_record(spec.label(), p)


def _bad_record(label: str, p: _Prepared) -> BadRecordError:
    return BadRecordError(f"{label}: line {p.item.line}: {p.error}.", index=p.item.index, line=p.item.line)


def check_output(
    output: Path, *, force: bool, inputs: InputSpec, checkpoint: str | os.PathLike[str] | None = None
) -> Path:
    """Refuses an output file that may not be written (see :mod:`vhtool.checkpoint.target`); returns it normalised.

    Raises:
        OutputExistsError: ``output`` is a previous score output and ``force`` is false.
        InputError: ``output`` is a directory, a file that is not a score output, the input file, inside
            the checkpoint, or its directory is missing.
    """
    from vhtool.checkpoint.target import check_output_target

    local_ckpt = checkpoint if checkpoint is not None and Path(checkpoint).exists() else None
    return check_output_target(output, force=force, inputs=[inputs.path, local_ckpt], kind="file")


def score_dataset(
    checkpoint: str | os.PathLike[str],
    *,
    inputs: InputSpec,
    options: ScoreOptions,
    output: Path | None = None,
    force: bool = False,
    on_record: Callable[[ScoredRecord], None] | None = None,
    on_skip: Callable[[SkippedRecord], None] | None = None,
    progress: Callable[[int], None] | None = None,
    validate_first: bool = False,
    scorer: Scorer | None = None,
) -> ScoreSummary:
    """Scores every record of ``inputs`` with ``checkpoint``'s value head or reward adapter, in input order.

    Records are written to ``output`` (JSONL, built in a temporary sibling and renamed into place at the
    end, so a failed run leaves nothing) and/or passed to ``on_record`` as they are scored, window by window.
    Under torchrun, see :func:`vhtool.models.distributed.score_dataset_distributed`.

    Args:
        checkpoint: the model to score with (local directory, Hub id, ``builtin:*``).
        inputs: where the records come from.
        options: see :class:`ScoreOptions`.
        output: a JSONL file to write, or ``None``.
        force: replace ``output`` if it exists.
        on_record: called with each scored record, in input order.
        on_skip: called with each skipped record (``on_error="skip"``).
        progress: called with the number of records just finished (scored or skipped).
        validate_first: with ``on_error="fail"`` and a re-readable input (a file or texts), read and
            tokenise everything before scoring, so that a bad record fails the run before any record is
            passed to ``on_record``. Ignored for a stream (stdin): it can be read once only.
        scorer: an already loaded :class:`Scorer` (its options win over ``options``' model options).

    Returns:
        The summary of the run.

    Raises:
        InputError: bad options, a bad record with ``on_error="fail"`` (a :class:`BadRecordError` naming its
            line), an existing ``output`` without ``force``, a checkpoint that cannot be scored.
        OperationError: writing the output failed.
    """
    if output is not None:
        output = check_output(output, force=force, inputs=inputs, checkpoint=checkpoint)
    # Taken before the model loads: an output that cannot be created fails in a second, not after the load.
    out_file = AtomicFile(output) if output is not None else None
    try:
        fmt, items = read_inputs(inputs, options.input_format)
        if scorer is None:
            scorer = Scorer(checkpoint, options=options)
        if validate_first and options.on_error == "fail" and inputs.rereadable:
            _validate_all(scorer, inputs, options)
            fmt, items = read_inputs(inputs, options.input_format)
        tally = _Tally()
        for window in _windows(items, options.window):
            prepared, good, lengths, plan = _plan_window(scorer, window, options, inputs.label())
            results = _score_batches(scorer, good, plan, range(len(plan)))
            tally.add_window(
                prepared,
                lengths,
                plan,
                results,
                sink=out_file.sink if out_file is not None else None,
                on_record=on_record,
                on_skip=on_skip,
                progress=progress,
            )
        summary = tally.summary(scorer, fmt)
        if out_file is not None and output is not None:
            out_file.commit()
            summary = _with_output(summary, str(output))
        return summary
    finally:
        if out_file is not None:
            out_file.discard()


def _with_output(summary: ScoreSummary, output: str) -> ScoreSummary:
    from dataclasses import replace

    return replace(summary, output=output)


_Results = dict[int, tuple[float, "list[float] | None"]]


def _plan_window(
    scorer: Scorer, window: Sequence[InputItem], options: ScoreOptions, label: str
) -> tuple[list[_Prepared], list[_Prepared], list[int], list[list[int]]]:
    """Tokenises a window and plans its batches: ``(prepared, good, lengths of good, batches of good positions)``.

    Raises:
        BadRecordError: a bad record with ``on_error="fail"`` (the first in input order).
    """
    prepared = scorer.prepare(window)
    good: list[_Prepared] = []
    for p in prepared:
        if p.error is None:
            good.append(p)
        elif options.on_error == "fail":
            raise _bad_record(label, p)
    lengths = [len(p.ids or ()) for p in good]
    plan = plan_batches(lengths, max_batch_tokens=options.max_batch_tokens, batch_size=options.batch_size)
    return prepared, good, lengths, plan


def _score_batches(
    scorer: Scorer, good: Sequence[_Prepared], plan: Sequence[list[int]], which: Iterable[int]
) -> _Results:
    """Scores the batches ``which`` (positions into ``plan``): ``{position in good: (score, values)}``."""
    results: _Results = {}
    for b in which:
        batch = plan[b]
        scores, values = scorer.score_batch([good[k].ids or [] for k in batch])
        for j, k in enumerate(batch):
            results[k] = (scores[j], values[j] if values is not None else None)
    return results


class _Tally:
    """The records of a run in input order, window by window: writes them, counts them, and sums them up."""

    def __init__(self) -> None:
        self.stats = _Stats()
        self.tokens = self.padded = self.truncated = self.batches = self.skipped = self.joined = 0
        self.t0 = time.perf_counter()

    def add_window(
        self,
        prepared: Sequence[_Prepared],
        lengths: Sequence[int],
        plan: Sequence[list[int]],
        results: _Results,
        *,
        sink: TextIO | None,
        on_record: Callable[[ScoredRecord], None] | None,
        on_skip: Callable[[SkippedRecord], None] | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.batches += len(plan)
        self.padded += sum(len(b) * max(lengths[k] for k in b) for b in plan)
        done = 0
        k = 0
        for p in prepared:
            if p.error is not None:
                self.skipped += 1
                if on_skip is not None:
                    on_skip(SkippedRecord(p.item.index, p.item.line, p.error))
                done += 1
                continue
            score, vals = results[k]
            n = lengths[k]
            k += 1
            record = ScoredRecord(
                index=p.item.index,
                score=float(score),
                tokens=n,
                truncated=p.truncated,
                values=tuple(vals) if vals is not None else None,
            )
            self.stats.add(record.score)
            self.tokens += n
            self.truncated += int(p.truncated)
            self.joined += int(p.joined)
            if sink is not None:
                sink.write(json.dumps(record.to_json(), allow_nan=False) + "\n")
            if on_record is not None:
                on_record(record)
            done += 1
        if progress is not None and done:
            progress(done)

    def summary(self, scorer: Scorer, fmt: str, *, ranks: int = 1) -> ScoreSummary:
        seconds = time.perf_counter() - self.t0
        stats = self.stats
        have = stats.finite > 0
        return ScoreSummary(
            checkpoint=scorer.checkpoint,
            count=stats.count,
            skipped=self.skipped,
            mean=stats.mean if have else None,
            std=math.sqrt(stats.m2 / stats.finite) if have else None,
            min=stats.min if have else None,
            max=stats.max if have else None,
            nan_count=stats.nan,
            inf_count=stats.inf,
            tokens=self.tokens,
            padded_tokens=self.padded,
            truncated=self.truncated,
            batches=self.batches,
            seconds=seconds,
            load_seconds=scorer.load_seconds,
            tokens_per_s=self.tokens / seconds if seconds > 0 else 0.0,
            records_per_s=stats.count / seconds if seconds > 0 else 0.0,
            head=scorer.head,
            head_reason=scorer.head_reason,
            join=scorer.join,
            joined_records=self.joined,
            input_format=fmt,
            dtype=scorer.compute_dtype,
            device=scorer.device,
            padding_side=scorer.padding_side,
            forward=scorer.forward_kind,
            notes=tuple(scorer.notes),
            ranks=ranks,
        )


__all__ = [
    "BadRecordError",
    "InputItem",
    "InputSpec",
    "ScoreOptions",
    "ScoreSummary",
    "ScoredRecord",
    "Scorer",
    "SkippedRecord",
    "check_output",
    "parse_max_memory",
    "plan_batches",
    "read_inputs",
    "score_dataset",
]
