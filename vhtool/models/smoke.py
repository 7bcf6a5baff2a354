"""The forward smoke check of ``vhtool verify --forward``: load the checkpoint, run one tiny batch on the CPU.

The file checks (:func:`vhtool.checkpoint.verify_op.verify_checkpoint`) need no torch; this is the part that
does, so it lives in the torch world and the CLI composes the two: :func:`verify_forward` adds these checks
to the file checks' result.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vhtool.checkpoint.catalogue import CONFIG_FILE
from vhtool.checkpoint.manifest import Manifest
from vhtool.checkpoint.verify_op import Check, VerifyResult
from vhtool.errors import VerificationError, VhtoolError
from vhtool.hub import resolve_source
from vhtool.models.loading import require_complete
from vhtool.models.value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead


def verify_forward(result: VerifyResult, *, allow_missing: bool = False) -> VerifyResult:
    """``result`` (the file checks) plus the forward checks; not run when a file check failed.

    Args:
        result: what :func:`~vhtool.checkpoint.verify_op.verify_checkpoint` found.
        allow_missing: pass the ``forward`` check even when backbone tensors are missing from the checkpoint
            (or unused by the architecture); its detail still names them.

    Returns:
        The merged result, with ``forward`` set.
    """
    if not result.ok:
        return result.with_checks(
            [Check("forward", False, "not run: the checkpoint failed the file checks above.")], forward=True
        )
    return result.with_checks(
        forward_checks(result.path, config=result.config, manifest=result.manifest, allow_missing=allow_missing),
        forward=True,
    )


def _source_dir(manifest: Manifest | None) -> Path | None:
    """The recorded source as a local directory, when it is a local path or a built-in that still exists."""
    source = manifest.source if manifest is not None else None
    if source is None:
        return None
    if source.kind == "local" and source.path is not None:
        p = Path(source.path)
        return p if (p / CONFIG_FILE).is_file() else None
    if source.kind == "builtin" and source.model is not None:
        try:
            return resolve_source(source.model).path
        except VhtoolError:
            return None
    return None


def forward_checks(
    root: Path, *, config: Mapping[str, Any], manifest: Manifest | None, allow_missing: bool = False
) -> list[Check]:
    """Loads the model and its source (quietly: no loading bars on stderr) and compares one batch.

    Args:
        root: the checkpoint directory.
        config: its ``config.json`` (as the file checks read it).
        manifest: its ``vhtool.json`` (None when it has none): the architecture and the recorded source.
        allow_missing: accept backbone tensors missing from the checkpoint (or unused by the architecture).

    Returns:
        ``forward`` (the model loads with every backbone tensor from the checkpoint, runs, and gives finite logits
        and values of the right shapes) and ``source logits`` (the base logits equal the recorded local or
        built-in source's, when it still exists). A model that does not load or run is a failed check, never an
        exception.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        return _forward_batch(root, config, manifest, allow_missing=allow_missing)
    finally:
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _forward_batch(
    root: Path, config: Mapping[str, Any], manifest: Manifest | None, *, allow_missing: bool
) -> list[Check]:
    checks: list[Check] = []
    try:
        arch = manifest.architecture if manifest is not None else None
        seq2seq = arch == "seq2seq" if arch in ("causal", "seq2seq") else bool(config.get("is_encoder_decoder"))
        cls = AutoModelForSeq2SeqLMWithValueHead if seq2seq else AutoModelForCausalLMWithValueHead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(str(root))
        try:
            require_complete(model.load_report, None, allow_missing=allow_missing)
        except VerificationError as exc:  # the verify line names the checkpoint already
            checks.append(Check("forward", False, str(exc)))
            return checks
        model.eval()
        vocab = int(getattr(model.pretrained_model.config, "vocab_size", 0) or config.get("vocab_size") or 2)
        ids = (torch.arange(2 * 6).reshape(2, 6) * 7 + 3) % max(vocab, 1)
        extra = {"decoder_input_ids": ids[:, :4]} if seq2seq else {}
        with torch.no_grad():
            logits, _, value = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
        problems = []
        if not getattr(model, "v_head_loaded", True):
            problems.append("the value head was not loaded from the checkpoint")
        if not bool(torch.isfinite(logits).all()):
            problems.append("logits hold NaN/inf")
        if not bool(torch.isfinite(value).all()):
            problems.append("values hold NaN/inf")
        if tuple(value.shape) != tuple(logits.shape[:2]):
            problems.append(f"values have shape {list(value.shape)}, expected {list(logits.shape[:2])}")
        detail = f"logits {list(logits.shape)}, values {list(value.shape)}, finite"
        if model.load_report is not None and not model.load_report.complete:  # only with allow_missing
            detail += f" (--allow-missing: {model.load_report.describe()})"
        checks.append(Check("forward", not problems, "; ".join(problems) if problems else detail))
    except Exception as exc:  # a model that does not load or run is a failed check, not a crash
        checks.append(Check("forward", False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
        return checks

    src = _source_dir(manifest)
    if src is None:
        checks.append(Check("source logits", True, "not compared: no local or built-in source recorded that exists"))
        return checks
    try:
        import transformers as tf

        auto = tf.AutoModelForSeq2SeqLM if seq2seq else tf.AutoModelForCausalLM
        base = auto.from_pretrained(str(src)).eval()
        with torch.no_grad():
            ref = base(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits.float()
        if ref.shape != logits.shape:
            checks.append(
                Check("source logits", False, f"shape {list(logits.shape)} vs the source's {list(ref.shape)}")
            )
        elif torch.equal(ref, logits):
            checks.append(Check("source logits", True, f"equal to {src}'s"))
        else:
            diff = float((ref - logits).abs().max())
            checks.append(Check("source logits", False, f"differ from {src}'s by up to {diff:.3g}"))
    except Exception as exc:
        checks.append(
            Check("source logits", False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        )
    return checks


__all__ = ["forward_checks", "verify_forward"]
