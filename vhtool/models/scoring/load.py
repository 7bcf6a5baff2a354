"""Loading a checkpoint for scoring: device, dtype, tokenizer, model (whole or by accelerate's device map), the
padding id, and which head and join to use. Everything refused here is refused before a record is read.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vhtool.checkpoint.catalogue import Kind, kind_of
from vhtool.errors import InputError, VhtoolError
from vhtool.models.scoring.options import ScoreOptions, parse_max_memory
from vhtool.models.scoring.readout import Readout, choose_readout

MAX_POSITION_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score, and what was decided while loading it.

    Attributes:
        model: the ``AutoModelForCausalLMWithValueHead`` (or, for a classifier checkpoint, the transformers
            ``…ForSequenceClassification`` / ``…ForTokenClassification``), in ``eval()`` mode, on ``device``
            (or dispatched).
        tokenizer: the checkpoint's tokenizer, or ``None`` (then only ``input_ids`` records can be scored).
        device: where inputs go (accelerate's main device under a device map).
        compute_dtype: the dtype the weights were loaded in (``float32``, ``bfloat16``, ...).
        max_positions: the model's positions, when its config says.
        vocab_rows: rows of the input embedding: token ids must be below this.
        pad_id: the id padding positions get (always a valid row; padding is masked or never read).
        padding_side: ``left`` or ``right`` (the tokenizer's; right without one).
        truncation_side: ``left`` or ``right`` (the tokenizer's; right without one).
        head: ``value`` or ``reward``.
        head_reason: why that head (``--head`` or the default's reason).
        join: ``chat`` or ``concat``: how prompt + completion become one text.
        notes: what the user should know about these choices, in the order they were made.
        classifier: ``None`` for a value-head model; ``seq-cls`` or ``token-cls`` for a plain transformers
            classifier with one label (a reward model, a critic), scored with its own ``score``/``classifier`` head.
        readout_pad_id: for ``seq-cls``, the config's ``pad_token_id``: the score is read, as transformers'
            sequence classifier reads it, at the rightmost token whose id is not this one (``None``: the last).
        readout: where each sequence's score is read and how it is normalised (the convention's rule, the one
            ``vhtool.json`` records, or ``--readout``; see :mod:`vhtool.models.scoring.readout`).
    """

    model: Any
    tokenizer: Any
    device: str
    compute_dtype: str
    max_positions: int | None
    vocab_rows: int
    pad_id: int
    padding_side: str
    truncation_side: str
    head: str
    head_reason: str
    join: str
    notes: tuple[str, ...]
    classifier: str | None = None
    readout_pad_id: int | None = None
    readout: Readout | None = None


def load_for_scoring(checkpoint: str, *, options: ScoreOptions, local_rank: int | None = None) -> LoadedModel:
    """Loads ``checkpoint`` as :class:`ScoreOptions` ask, refusing what cannot be scored.

    Args:
        checkpoint: a vhtool (or TRL) value-head checkpoint, or a transformers ``…ForSequenceClassification``
            reward model / ``…ForTokenClassification`` critic with one label: local directory, Hub id or ``builtin:*``.
        options: the model options (``device``, ``dtype``, ``device_map``, ``head``, ``join``, ``max_length``).
        local_rank: under torchrun, this process's GPU: CUDA scoring uses ``cuda:<local_rank>``.

    Raises:
        InputError: not a causal-LM checkpoint, no CUDA for ``--device cuda``, a ``--max-length`` over the model's
            positions, a head the checkpoint lacks, a chat join without a chat template, a device map accelerate
            cannot use.
        VerificationError: backbone tensors missing from the checkpoint (or unused by the architecture) and no
            ``options.allow_missing``.
    """
    import torch
    from transformers import AutoConfig

    from vhtool.models.loading import require_complete, resolve_pretrained

    notes: list[str] = []
    device = "cpu" if options.device_map is not None else pick_device(options.device)
    if device == "cuda" and local_rank is not None:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"

    resolved = resolve_pretrained(checkpoint)
    try:
        config = AutoConfig.from_pretrained(resolved.load_from)
    except (OSError, ValueError) as exc:
        raise InputError(f"{checkpoint}: not a model checkpoint ({exc}).") from None
    if getattr(config, "is_encoder_decoder", False):
        raise encoder_decoder_refusal(checkpoint, config.model_type)
    max_positions = _max_positions(config)
    limit = options.max_length
    if limit is not None and max_positions is not None and limit > max_positions:
        raise InputError(
            f"--max-length {limit} is more than the model's {max_positions} "
            f"positions; use --max-length {max_positions} or less."
        )

    from vhtool.models.scoring.frameworks import build_model, framework_checkpoint

    canon = framework_checkpoint(_framework_dir(resolved, options), allow_pickle=options.allow_pickle)
    classifier = "token-cls" if canon is not None else classifier_kind(config, checkpoint)
    if canon is not None and options.device_map is not None:
        raise InputError(
            f"--device-map: {checkpoint} is a {canon.convention} checkpoint, scored whole; drop --device-map."
        )
    with _quiet_transformers():
        tok = _load_tokenizer(resolved)
        if tok is None:
            notes.append("the checkpoint has no tokenizer: only pre-tokenised input_ids records can be scored.")
        dtype = torch_dtype(options.dtype, config)
        if canon is not None:
            model, caught = build_model(canon, dtype), list[warnings.WarningMessage]()
            notes.extend(canon.notes)
        elif classifier is None:
            model, caught = _load_model(checkpoint, options, dtype)
        else:
            model, caught = _load_classifier(resolved.load_from, classifier, options, dtype)
    require_complete(getattr(model, "load_report", None), checkpoint, allow_missing=options.allow_missing)
    model.eval()
    base = base_model(model)
    if options.device_map is None:
        model.to(device)
    else:
        device = _place_mapped(model, options.device_map, notes)
    compute_dtype = str(next(base.parameters()).dtype).replace("torch.", "")

    vocab_rows = int(base.get_input_embeddings().num_embeddings)
    # the readout id is read before _pad_id may give the tokenizer a pad token: transformers' classifier reads
    # the config's pad_token_id, whatever the tokenizer pads with
    readout_pad_id = getattr(config, "pad_token_id", None) if classifier == "seq-cls" else None
    if isinstance(readout_pad_id, list):
        readout_pad_id = readout_pad_id[0] if readout_pad_id else None
    pad_id = _pad_id(tok, config, vocab_rows, checkpoint=checkpoint, notes=notes)
    if canon is not None:
        head, head_reason = _choose_classifier_head(
            "seq-cls" if canon.role == "reward" else "token-cls", options, checkpoint
        )
    elif classifier is None:
        head, head_reason = _choose_head(model, options, checkpoint)
    else:
        head, head_reason = _choose_classifier_head(classifier, options, checkpoint)
    readout = _readout(resolved, config, canon, classifier, tok, options, getattr(config, "pad_token_id", None))
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, FutureWarning)):
            # a library's own deprecation: not the user's concern; re-issued so the caller's filters decide
            # (the CLI shows them with --debug only)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif "no value-head weights" not in str(w.message):
            notes.append(str(w.message))
    return LoadedModel(
        model=model,
        tokenizer=tok,
        device=device,
        compute_dtype=compute_dtype,
        max_positions=max_positions,
        vocab_rows=vocab_rows,
        pad_id=pad_id,
        padding_side=getattr(tok, "padding_side", "right") if tok is not None else "right",
        truncation_side=getattr(tok, "truncation_side", "right") if tok is not None else "right",
        head=head,
        head_reason=head_reason,
        join=_choose_join(tok, options.join, checkpoint),
        notes=tuple(notes),
        classifier=classifier,
        readout_pad_id=readout_pad_id if isinstance(readout_pad_id, int) else None,
        readout=readout,
    )


def _framework_dir(resolved: Any, options: ScoreOptions) -> Any:
    """The local folder to look for a framework's checkpoint in: the resolved one, or a Hub id's snapshot.

    A Hub id the Hub answers for is loaded by transformers from its id; a framework's checkpoint (OpenRLHF, verl,
    DeepSpeed-Chat, trlx) is read from files instead, so its checkpoint files are fetched into the cache first
    (exactly what :func:`~vhtool.hub.source.hub_snapshot` names: config, tokenizer, weights; the pickles only with
    ``--allow-pickle``). transformers then finds the same files in the cache when it is not one.
    """
    if resolved.local_dir is not None or resolved.repo_id is None:
        return resolved.local_dir
    from vhtool.hub.source import hub_snapshot

    snap = hub_snapshot(
        resolved.repo_id,
        revision=resolved.revision,
        allow_pickle=options.allow_pickle,
        token=resolved.token,
        cache_dir=resolved.cache_dir,
    )
    return snap.path


def _readout(
    resolved: Any, config: Any, canon: Any, classifier: str | None, tok: Any, options: ScoreOptions, pad_id: Any
) -> Readout:
    """The readout rule and normalisation: ``--readout``, else ``vhtool.json``'s record, else the convention's."""
    from vhtool.checkpoint.conventions import config_normalization

    manifest = getattr(resolved, "manifest", None)
    conversion = getattr(manifest, "conversion", None)
    recorded = getattr(conversion, "readout", None)
    if canon is not None:
        convention, rule, normalization = canon.convention, canon.readout, dict(canon.normalization)
    else:
        convention = classifier or "vhtool"
        rule = "last-non-pad" if classifier == "seq-cls" else "last"
        normalization = config_normalization(config.to_dict())
    stored = getattr(manifest, "normalization", None)
    if not normalization and stored:  # a target that cannot hold it (DeepSpeed-Chat, trlx): vhtool.json has it
        normalization = config_normalization(dict(stored))
    eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    return choose_readout(
        asked=options.readout,
        recorded=recorded,
        convention_rule=rule,
        convention=convention,
        normalize=options.normalize,
        normalization=normalization,
        eos_id=eos,
        pad_id=pad_id,
    )


def classifier_kind(config: Any, checkpoint: str) -> str | None:
    """``seq-cls`` / ``token-cls`` for a transformers classifier checkpoint (by ``architectures``), else ``None``.

    Raises:
        InputError: a classifier with more than one label (a reward or a value is one number).
    """
    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    kind = None
    for a in archs:
        if a.endswith("ForSequenceClassification"):
            kind = "seq-cls"
        elif a.endswith("ForTokenClassification"):
            kind = "token-cls"
    if kind is None:
        return None
    labels = int(getattr(config, "num_labels", 1))
    if labels != 1:
        raise InputError(
            f"{checkpoint} is a {archs[0]} with {labels} labels; a reward model or critic has one "
            "(num_labels=1), so there is no single score to read."
        )
    return kind


def base_model(model: Any) -> Any:
    """The transformers model under the value-head wrapper (``pretrained_model``), or a classifier itself."""
    return getattr(model, "pretrained_model", model)


def head_module(model: Any) -> Any:
    """The one-output head: the value head, or a classifier's ``score`` (``classifier`` in some families)."""
    if hasattr(model, "v_head"):
        return model.v_head
    for name in ("score", "classifier"):
        module = getattr(model, name, None)
        if module is not None:
            return module
    raise InputError(f"{type(model).__name__}: no score or classifier head found.")


def pick_device(device: str) -> str:
    """``cpu`` or ``cuda`` for the ``--device`` option (``auto``: cuda when available).

    Raises:
        InputError: ``cuda`` asked for and none is available.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu (or auto).")
    return device


def torch_dtype(name: str, config: Any) -> Any:
    """The torch dtype for the ``--dtype`` option (``auto``: the one the config records, else float32)."""
    import torch

    if name == "auto":
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(stored, str):
            name = stored.replace("torch.", "")
        elif stored is not None:
            return stored
        else:
            name = "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def valid_pad_id(pad_id: Any, vocab_rows: int) -> int:
    """``pad_id`` when it is a row of the embedding, else 0.

    Padding positions are masked (or, right-padded, never attended to) and never read, so any valid id gives
    the same scores; an id outside the embedding (GPT-2's eos 50256 on a model with a smaller vocabulary, a
    negative or missing id) would make the embedding lookup fail.

    Args:
        pad_id: the configured padding id (an int, a list of ints, or ``None``).
        vocab_rows: rows of the model's input embedding.
    """
    if isinstance(pad_id, list):
        pad_id = pad_id[0] if pad_id else None
    if isinstance(pad_id, int) and not isinstance(pad_id, bool) and 0 <= pad_id < vocab_rows:
        return pad_id
    return 0


# ---------------------------------------------------------------------------------------------- the pieces
def _max_positions(config: Any) -> int | None:
    for attr in MAX_POSITION_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' info logs and loading bars off while loading (they would mix with vhtool's output)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _has_tokenizer_files(folder: Any) -> bool:
    """Whether a local checkpoint folder holds any tokenizer file the catalogue knows (else: no tokenizer)."""
    return any(p.is_file() and kind_of(p.name) is Kind.TOKENIZER for p in folder.iterdir())


def _load_tokenizer(resolved: Any) -> Any:
    """The checkpoint's tokenizer, or ``None`` when it has none."""
    from transformers import AutoTokenizer

    try:
        if resolved.local_dir is not None and not _has_tokenizer_files(resolved.local_dir):
            return None
        tok = AutoTokenizer.from_pretrained(resolved.load_from)
    except (OSError, ValueError, TypeError):
        return None
    # transformers may build an empty tokenizer from the config alone: that is no tokenizer.
    return tok if len(tok) > len(tok.all_special_ids) else None


def _load_model(checkpoint: str, options: ScoreOptions, dtype: Any) -> tuple[Any, list[warnings.WarningMessage]]:
    """The value-head model, and the warnings raised while loading it (they become notes)."""
    import torch

    from vhtool.models.value_head import AutoModelForCausalLMWithValueHead

    load_kwargs = _load_kwargs(options, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = AutoModelForCausalLMWithValueHead.from_pretrained(
                checkpoint, allow_pickle=options.allow_pickle, **load_kwargs
            )
        except (ValueError, ImportError, RuntimeError, OSError) as exc:
            # under --device-map, accelerate reports a device or folder it cannot use this way
            if options.device_map is None or isinstance(exc, (VhtoolError, torch.OutOfMemoryError)):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, OSError) and exc.filename is not None:
                first = f"{exc.filename}: {exc.strerror or first}"
            hint = " Pass --offload-folder DIR." if "offload_folder" in first.lower() else ""
            raise InputError(f"--device-map {options.device_map}: {first}{hint}") from None
    return model, list(caught)


def _load_kwargs(options: ScoreOptions, dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s keyword arguments for the compute dtype and big-model loading (``--device-map``)."""
    load_kwargs: dict[str, Any] = {"dtype": dtype}
    if options.device_map is not None:
        load_kwargs["device_map"] = options.device_map
        if options.max_memory is not None:
            load_kwargs["max_memory"] = parse_max_memory(options.max_memory)
        if options.offload_folder is not None:
            load_kwargs["offload_folder"] = options.offload_folder
    return load_kwargs


def _load_classifier(
    load_from: Any, kind: str, options: ScoreOptions, dtype: Any
) -> tuple[Any, list[warnings.WarningMessage]]:
    """A transformers ``…ForSequenceClassification`` / ``…ForTokenClassification`` and its load warnings."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from vhtool.models.loading import LoadReport

    cls = AutoModelForSequenceClassification if kind == "seq-cls" else AutoModelForTokenClassification
    load_kwargs = _load_kwargs(options, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model, info = cls.from_pretrained(load_from, output_loading_info=True, **load_kwargs)
        except (ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{load_from}: cannot load it as a {kind} model ({first}).") from None
    model.load_report = LoadReport.from_loading_info(info, model)  # checked by require_complete, as for a value head
    return model, list(caught)


def _place_mapped(model: Any, device_map_option: str, notes: list[str]) -> str:
    """Under ``device_map``: inputs go to accelerate's main device (returned); the heads sit where the hidden is."""
    base = base_model(model)
    device_map = getattr(base, "hf_device_map", None) or getattr(model, "hf_device_map", None)
    if not device_map:  # everything fitted on one device: accelerate recorded no map
        device = str(next(base.parameters()).device)
        notes.append(f"--device-map {device_map_option}: the whole model fits on {device}.")
        return device
    names = {v: f"cuda:{v}" if isinstance(v, int) else str(v) for v in device_map.values()}
    device = next((n for n in names.values() if n not in ("cpu", "disk")), "cpu")
    head_device = next(head_module(model).parameters()).device
    placed = ", ".join(sorted(set(names.values())))
    notes.append(f"--device-map {device_map_option}: the model is placed on {placed}; the heads run on {head_device}.")
    return device


def _pad_id(tok: Any, config: Any, vocab_rows: int, *, checkpoint: str, notes: list[str]) -> int:
    """The padding id: the tokenizer's pad (or eos), else the config's; 0 when that is not a row of the embedding."""
    pad_id = getattr(tok, "pad_token_id", None) if tok is not None else None
    if tok is not None and pad_id is None:
        if tok.eos_token is None:
            raise InputError(f"{checkpoint}: the tokenizer has neither a pad nor an eos token.")
        tok.pad_token = tok.eos_token
        pad_id = tok.pad_token_id
        notes.append(f"the tokenizer has no pad token; using eos ({tok.eos_token!r}) for padding.")
    if pad_id is None:
        pad_id = getattr(config, "pad_token_id", None) or getattr(config, "eos_token_id", None)
    return valid_pad_id(pad_id, vocab_rows)


def _choose_head(model: Any, options: ScoreOptions, checkpoint: str) -> tuple[str, str]:
    """``(head, reason)``: the asked head, or reward when an adapter is attached, else value; refused if absent."""
    has_adapter = bool(getattr(model, "supports_rm_adapter", False)) and hasattr(model, "score")
    head = options.head
    if head is None:
        head = "reward" if has_adapter else "value"
        reason = "default: reward adapter attached" if has_adapter else "default: no reward adapter"
    else:
        reason = "--head"
    if head == "reward" and not has_adapter:
        raise InputError(
            f"{checkpoint} has no reward adapter; attach one with `vhtool attach-reward-adapter` or use --head value."
        )
    if head == "value" and not model.v_head_loaded:
        raise no_value_head_refusal(checkpoint, has_adapter=has_adapter)
    if head == "reward" and options.device_map is not None:
        # PEFT copies adapter weights into the loaded parameters; an offloaded layer's are on the meta
        # device, so the copy is a silent no-op and the scores would be garbage: refuse instead.
        tag = f".{getattr(model, 'rm_adapter_name', None) or ''}."
        if any(tag in n and p.device.type == "meta" for n, p in model.pretrained_model.named_parameters()):
            raise InputError(
                f"--device-map {options.device_map} offloaded layers that the reward adapter modifies, and "
                "PEFT cannot load adapter weights into offloaded layers; give the model more --max-memory (no "
                "offload), score --head value, or score without --device-map."
            )
    return head, reason


def encoder_decoder_refusal(checkpoint: str, model_type: str) -> InputError:
    """The refusal of an encoder-decoder (said from its config, before the load when the files are local)."""
    return InputError(
        f"{checkpoint} is an encoder-decoder ({model_type}); `vhtool score` scores causal LMs "
        "only (for a seq2seq model it is not defined what the decoder would read). Score the decoder "
        "outputs with the Python API instead."
    )


def no_value_head_refusal(checkpoint: str, *, has_adapter: bool) -> InputError:
    """The refusal of a value head that is not in the checkpoint (said from headers when the files are local)."""
    return InputError(
        f"{checkpoint} has no value-head weights (v_head.*): its values would come from a random head. "
        "Create a value-head checkpoint with `vhtool init`" + (", or use --head reward." if has_adapter else ".")
    )


def _choose_classifier_head(kind: str, options: ScoreOptions, checkpoint: str) -> tuple[str, str]:
    """A sequence classifier is a reward model (``reward``); a token classifier is a critic (``value``)."""
    head = "reward" if kind == "seq-cls" else "value"
    what = "sequence-classification reward model" if kind == "seq-cls" else "token-classification critic"
    if options.head is not None and options.head != head:
        raise InputError(f"{checkpoint} is a {what}: it has a {head} head only; use --head {head} (or omit --head).")
    return head, ("--head" if options.head is not None else f"default: {what}")


def _choose_join(tok: Any, join: str | None, checkpoint: str) -> str:
    """``chat`` when the tokenizer has a chat template (or as asked), else ``concat``."""
    has_template = tok is not None and bool(getattr(tok, "chat_template", None))
    chosen = join if join is not None else ("chat" if has_template else "concat")
    if chosen == "chat" and not has_template:
        raise InputError(f"--join chat: the tokenizer of {checkpoint} has no chat template; use --join concat.")
    return chosen


__all__ = [
    "LoadedModel",
    "base_model",
    "classifier_kind",
    "encoder_decoder_refusal",
    "head_module",
    "load_for_scoring",
    "no_value_head_refusal",
    "pick_device",
    "torch_dtype",
    "valid_pad_id",
]
