"""What ``score`` (and ``evaluate``) can refuse before torch loads: the records' shape and the checkpoint's files.

Loading torch and a model takes seconds; a bad JSON line, a record without a text, an empty input, an
encoder-decoder or a checkpoint without a value head can be told from the files alone, so they are told first.
Nothing here imports torch or transformers (tests/test_cli_ux.py checks ``sys.modules``). What needs the model
(the vocabulary, a record's length in tokens, the chat template) is checked after the load, still before a
record is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.checkpoint.catalogue import ADAPTER_CONFIG, Kind, kind_of
from vhtool.checkpoint.conventions import detect_framework, find_heads
from vhtool.checkpoint.layout import open_checkpoint
from vhtool.errors import InputError, VhtoolError
from vhtool.models.scoring.inputs import InputItem, InputSpec, looks_like_jsonl, read_inputs, record_shape
from vhtool.models.scoring.options import ScoreOptions
from vhtool.models.scoring.results import BadRecordError


@dataclass(frozen=True)
class Precheck:
    """What the check found that is not an error: notes for the user (shown before the model loads)."""

    notes: tuple[str, ...] = ()


def precheck_score(checkpoint: str, spec: InputSpec, options: ScoreOptions) -> Precheck:
    """Refuses, before torch loads, what ``score`` would refuse after loading; returns notes.

    Args:
        checkpoint: as given to ``score``.
        spec: the input; a stream (stdin) is read once, by the run, so only files and ``--text`` are read here.
        options: the score options (``on_error``, ``input_format``, ``head``).

    Raises:
        BadRecordError: with ``on_error="fail"``, the first record whose shape is bad (JSON, fields, types).
        InputError: an input with no records, an encoder-decoder checkpoint, a checkpoint with no head to read.
    """
    notes = check_records(spec, options)
    check_checkpoint_files(checkpoint, options)
    return Precheck(notes=notes)


def check_records(spec: InputSpec, options: ScoreOptions) -> tuple[str, ...]:
    """Reads a file or ``--text`` input once, checking every record's shape; returns notes (a ``.txt`` of JSONL)."""
    if not spec.rereadable:
        return ()
    fmt, items = read_inputs(spec, options.input_format)
    notes: list[str] = []
    count = 0
    warn_json = fmt == "text" and spec.path is not None and options.input_format == "auto"
    for item in items:
        count += 1
        problem = item.error or _shape_problem(item)
        if problem is not None and options.on_error == "fail":
            raise BadRecordError(f"{spec.where(item.line)}: {problem}.", index=item.index, line=item.line)
        if warn_json and not notes and isinstance(item.payload, str) and looks_like_jsonl(item.payload):
            notes.append(  # once: the first such line says it for the file
                f"{spec.label()}: line {item.line} is a JSON object, but a .txt file is read as plain text "
                "(each line scored as written); rename it .jsonl or pass --format jsonl."
            )
    if count == 0:
        raise InputError(f"{spec.label()}: no records to score (the input is empty); nothing was written.")
    return tuple(notes)


def _shape_problem(item: InputItem) -> str | None:
    try:
        record_shape(item.payload)
    except InputError as exc:
        return str(exc)
    return None


def check_checkpoint_files(checkpoint: str, options: ScoreOptions) -> None:
    """Refuses a local or built-in checkpoint that is an encoder-decoder or has no head to score with.

    Read from its config and safetensors headers. Anything the files leave open (a Hub id, pickle weights, a
    framework's own layout, a classifier, a reward adapter) is left to the load, which words it the same way.
    """
    from vhtool.hub.names import locate
    from vhtool.models.scoring.load import encoder_decoder_refusal, no_value_head_refusal

    try:
        kind, where = locate(checkpoint, missing="no such directory")
    except VhtoolError:
        return  # the load reports it, in the words of every other command
    if kind == "hub":
        return
    root = Path(where)
    try:
        ckpt = open_checkpoint(root)
    except VhtoolError:
        return
    if ckpt.is_encoder_decoder:
        raise encoder_decoder_refusal(checkpoint, str(ckpt.config.get("model_type", "unknown")))
    if options.head == "reward" or _has_reward_adapter(root, ckpt.manifest) or _is_classifier(ckpt.config):
        return
    names = list(ckpt.tensors) + (list(ckpt.sidecar.tensors) if ckpt.sidecar is not None else [])
    if any(n.startswith("v_head.") for n in names) or find_heads(ckpt) or detect_framework(names, ckpt.config):
        return
    if any(kind_of(p.name) is Kind.PICKLE for p in root.iterdir()):
        return  # a pickle may hold the head; the load reads it with --allow-pickle, or says why not
    raise no_value_head_refusal(checkpoint, has_adapter=False)


def _has_reward_adapter(root: Path, manifest: Any) -> bool:
    if manifest is not None and getattr(manifest, "reward_adapter", None) is not None:
        return True
    folders = [root, *(d for d in root.iterdir() if d.is_dir())]  # attach-reward-adapter writes a subfolder
    return any((d / ADAPTER_CONFIG).is_file() for d in folders)


def _is_classifier(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    kinds = ("ForSequenceClassification", "ForTokenClassification")
    return any(isinstance(a, str) and a.endswith(kinds) for a in archs)


__all__ = ["Precheck", "check_checkpoint_files", "check_records", "precheck_score"]
