"""Reward scoring with a LoRA (or other PEFT) reward adapter on the policy's own base weights.

A reward model trained as ``…ForSequenceClassification`` (``num_labels=1``) with PEFT is an adapter plus
a score head ``[1, hidden]``. vhtool loads the adapter into the policy and the head beside it, and
:func:`compute_reward_score` switches to the adapter, runs the backbone once and applies the head —
the same computation as ``AutoModelForSequenceClassification`` + ``PeftModel.from_pretrained``.

What differs from TRL 1.12.0 (each has a test):

* the score bias is detected from the score head's keys only, so an adapter trained with a LoRA
  ``bias="lora_only"``/``"all"`` loads; the biases it trained are swapped in only while scoring, so
  the policy's own forward is untouched;
* an adapter without a score head, or with a 2-label head, is refused with a message saying how to fix it;
* switching happens in a context manager that restores the previously active adapter (or
  ``ppo_adapter_name`` when given), the train/eval mode of every module and every ``requires_grad``;
* a policy without a PEFT adapter of its own works: the reward adapter's layers are injected but
  disabled outside scoring, the wrapper keeps the plain model, and its ``state_dict()`` shows the
  plain keys;
* the token (and revision) reach the adapter download;
* only the last hidden state is computed (the backbone's ``last_hidden_state``, no LM head, no
  ``output_hidden_states``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vhtool.checkpoint.adapter import (
    PEFT_PREFIX,
    AdapterInfo,
    adapter_member,
    check_fit,
    inspect_adapter,
)
from vhtool.checkpoint.copyio import hash_file
from vhtool.checkpoint.layout import safe_member
from vhtool.checkpoint.names import ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_WEIGHTS, MANIFEST_FILE
from vhtool.errors import CheckpointError, InputError
from vhtool.models.hidden import LastHidden, mapped_output_device
from vhtool.models.loading import name_keys

_BINDINGS_ATTR = "_vhtool_reward_bindings"


@dataclass
class _RewardBinding:
    """How a reward adapter is wired into a model (kept in the base model's ``__dict__``, not as a submodule)."""

    name: str
    peft_model: Any
    plain: bool
    overrides: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)
    hook_handles: list[Any] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- helpers
def last_token_index(attention_mask: torch.Tensor | None, *, seq_len: int | None = None) -> torch.Tensor:
    """Index of each row's last non-padding token, for left or right padding (or none).

    Args:
        attention_mask: ``(batch, seq)``, non-zero where a token is real; ``None`` means no padding.
        seq_len: the sequence length, needed only when ``attention_mask`` is ``None``.

    Returns:
        A ``(batch,)`` long tensor (or a 0-d tensor ``seq_len - 1`` when ``attention_mask`` is ``None``).

    Raises:
        InputError: a row has no real token.
    """
    if attention_mask is None:
        if seq_len is None or seq_len < 1:
            raise InputError("last_token_index needs an attention_mask or a positive seq_len.")
        return torch.tensor(seq_len - 1, dtype=torch.long)
    if attention_mask.dim() != 2:
        raise InputError(f"attention_mask must be (batch, seq), got shape {list(attention_mask.shape)}.")
    real = attention_mask != 0
    empty = (~real.any(dim=-1)).nonzero().flatten()
    if empty.numel():
        raise InputError(f"sequence {int(empty[0])} of the batch has no tokens (its attention mask is all zero).")
    positions = torch.arange(real.shape[-1], device=real.device).expand_as(real)
    # the largest position that is real: right padding -> before the pads, left padding -> the last column
    return torch.where(real, positions, torch.full_like(positions, -1)).max(dim=-1).values


def sequence_rewards(scores: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One reward per sequence: the token score at each sequence's last non-padding token.

    Args:
        scores: ``(batch, seq, 1)`` or ``(batch, seq)`` token scores (e.g. from :func:`compute_reward_score`).
        attention_mask: ``(batch, seq)``; ``None`` reads the last position of every row.

    Returns:
        A ``(batch,)`` tensor.
    """
    if scores.dim() == 3:
        if scores.shape[-1] != 1:
            raise InputError(f"scores have {scores.shape[-1]} labels; a reward has one (shape (batch, seq, 1)).")
        scores = scores[..., 0]
    if scores.dim() != 2:
        raise InputError(f"scores must be (batch, seq) or (batch, seq, 1), got shape {list(scores.shape)}.")
    if attention_mask is None:
        return scores[:, -1]
    if attention_mask.shape != scores.shape:
        raise InputError(
            f"attention_mask shape {list(attention_mask.shape)} does not match scores {list(scores.shape)}."
        )
    idx = last_token_index(attention_mask).to(scores.device)
    return scores.gather(1, idx.unsqueeze(1)).squeeze(1)


def _peft_model_class() -> Any:
    from peft import PeftModel

    return PeftModel


def _hf_model(model: Any) -> Any:
    """The ``transformers`` model under a PEFT wrapper (or the model itself)."""
    if isinstance(model, _peft_model_class()):
        return model.get_base_model()
    return model


def _bindings(hf_model: Any) -> dict[str, _RewardBinding]:
    found: dict[str, _RewardBinding] = hf_model.__dict__.get(_BINDINGS_ATTR) or {}
    return found


def _is_tuner_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


# ---------------------------------------------------------------------------------------------- loading
def _resolve_adapter_dir(adapter_id: str, *, token: Any, revision: str | None) -> Path:
    path = Path(adapter_id).expanduser()
    if path.exists():
        return path
    from vhtool.hub import resolve_source

    return resolve_source(adapter_id, revision=revision, token=token, what="the reward adapter").path


def _live_shapes(hf_model: Any) -> dict[str, tuple[int, ...]]:
    """The model's tensors as a plain checkpoint would name them (PEFT wrappers and adapters left out)."""
    from vhtool.checkpoint.adapter import _tuner_split

    quantized = bool(getattr(hf_model, "is_loaded_in_4bit", False) or getattr(hf_model, "is_loaded_in_8bit", False))
    shapes: dict[str, tuple[int, ...]] = {}
    for name, tensor in hf_model.state_dict(keep_vars=True).items():
        parts = name.split(".")
        if "modules_to_save" in parts or _tuner_split(name) is not None:
            continue
        parts = [p for p in parts if p not in ("base_layer", "original_module")]
        shape = tuple(tensor.shape)
        if quantized and len(shape) == 2 and parts[-1] == "weight":
            shape = ()  # packed; LoRA shape checks are skipped
        shapes[".".join(parts)] = shape
    return shapes


def _load_adapter_state(info: AdapterInfo) -> dict[str, torch.Tensor]:
    if info.weights_file == ADAPTER_PICKLE:
        state: dict[str, torch.Tensor] = torch.load(info.path / ADAPTER_PICKLE, map_location="cpu", weights_only=True)
        return state
    from safetensors.torch import load_file

    return load_file(str(adapter_member(info.path, ADAPTER_WEIGHTS, "the adapter weights")))


def _reward_peft_config(info: AdapterInfo) -> Any:
    """The adapter's PEFT config without the parts vhtool handles itself (score head, trained base tensors)."""
    from peft import PeftConfig

    cfg = PeftConfig.from_pretrained(str(info.path))
    if getattr(cfg, "is_prompt_learning", False):
        raise InputError(f"{info.path}: prompt-learning adapters cannot be reward adapters; use LoRA.")
    cfg.inference_mode = True
    if hasattr(cfg, "modules_to_save"):
        cfg.modules_to_save = None  # the score head lives beside the model; other saved modules are swapped in
    if hasattr(cfg, "bias"):
        cfg.bias = "none"  # trained biases are swapped in while scoring, never written into the policy
    return cfg


def _output_device(hf_model: Any) -> torch.device:
    mapped = mapped_output_device(hf_model)  # under accelerate's device map: where the hidden state comes out
    if mapped is not None:
        return mapped
    get = getattr(hf_model, "get_output_embeddings", None)
    out = get() if get is not None else None
    if out is not None and getattr(out, "weight", None) is not None:
        return torch.device(out.weight.device)
    return torch.device(next(hf_model.parameters()).device)


def _model_dtype(hf_model: Any) -> torch.dtype:
    dtype = getattr(hf_model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    found: torch.dtype = next((p.dtype for p in hf_model.parameters() if p.is_floating_point()), torch.float32)
    return found


def load_reward_adapter(
    pretrained_model: Any,
    adapter_id: str,
    *,
    adapter_name: str,
    token: Any = None,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> tuple[Any, nn.Module]:
    """Loads a reward adapter into a policy model and returns ``(model to wrap, frozen score head)``.

    ``pretrained_model`` may be a plain ``transformers`` model — the adapter's layers are injected but
    disabled, so normal forward and ``generate`` run the plain base and ``state_dict()`` keeps the plain
    keys; the same object is returned — or a ``PeftModel``, which gains the adapter as an extra,
    non-trainable adapter (its active adapter and ``requires_grad`` flags are kept).

    Args:
        pretrained_model: the policy's ``PreTrainedModel`` or ``PeftModel``.
        adapter_id: a local PEFT adapter directory or a Hub id.
        adapter_name: the PEFT name of the reward adapter.
        token: Hub token for the download.
        revision: Hub revision of the adapter.
        allow_pickle: accept ``adapter_model.bin`` (read with ``weights_only=True``).

    Returns:
        The model the wrapper should hold, and the score head (``nn.Linear(hidden, 1)``, frozen, in the
        model's dtype, on the device of its output layer).

    Raises:
        InputError: not a PEFT adapter, no score head, a multi-label head, an adapter that does not fit the
            policy, or an adapter name already in use.
        HubUnavailableError: a Hub id that cannot be fetched.
    """
    if not adapter_name or not isinstance(adapter_name, str):
        raise InputError("reward adapter name must be a non-empty string.")
    PeftModel = _peft_model_class()  # noqa: N806
    is_peft = isinstance(pretrained_model, PeftModel)
    hf = _hf_model(pretrained_model)
    if getattr(hf.config, "is_encoder_decoder", False):
        raise InputError("reward adapters are supported on causal-LM policies, not encoder-decoders.")
    if is_peft and adapter_name in pretrained_model.peft_config:
        raise InputError(f"the policy already has an adapter named {adapter_name!r}; choose another name.")
    if adapter_name in _bindings(hf):
        raise InputError(f"a reward adapter named {adapter_name!r} is already loaded into this model.")
    if not is_peft and any(_is_tuner_layer(m) for m in hf.modules()):
        raise InputError(
            "the model already holds PEFT layers but is not a PeftModel; pass the PeftModel (or the plain model)."
        )

    adapter_dir = _resolve_adapter_dir(str(adapter_id), token=token, revision=revision)
    info = inspect_adapter(adapter_dir, allow_pickle=allow_pickle)
    modules = check_fit(info, _live_shapes(hf), hf.config.to_dict(), where="the policy")
    state = _load_adapter_state(info)
    cfg = _reward_peft_config(info)
    if is_peft and cfg.peft_type != pretrained_model.peft_type:
        raise InputError(
            f"the policy's own adapter is {pretrained_model.peft_type} and the reward adapter {cfg.peft_type}; PEFT "
            "cannot hold both in one model. Use a policy adapter of the same type (or none)."
        )

    grads = {p: p.requires_grad for p in hf.parameters()}
    modes = {m: m.training for m in hf.modules()}
    if is_peft:
        peft_model = pretrained_model
        active = list(peft_model.active_adapters)
        peft_model.add_adapter(adapter_name, cfg)
    else:
        peft_model = PeftModel(hf, cfg, adapter_name=adapter_name)
        active = []

    tuner_state: dict[str, torch.Tensor] = {}
    for mod, keys in info.tuner_keys.items():
        target = modules[mod]
        for key in keys:
            rel = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
            tuner_state[PEFT_PREFIX + target + rel[len(mod) :]] = state[key]
    from peft.utils import set_peft_model_state_dict

    try:
        result: Any = set_peft_model_state_dict(peft_model, tuner_state, adapter_name=adapter_name)
        missing = [k for k in result.missing_keys if f".{adapter_name}" in k]
        if missing or result.unexpected_keys:
            unexpected = name_keys(result.unexpected_keys) or "none"
            raise CheckpointError(
                f"{info.path}: the adapter's tensors do not match the layers PEFT built from its config "
                f"(missing: {name_keys(missing) or 'none'}; unexpected: {unexpected})."
            )
        overrides = _override_pairs(hf, info, state)
    except BaseException:
        _unload(peft_model, adapter_name, plain=not is_peft)
        raise
    finally:
        for p in hf.parameters():
            p.requires_grad_(grads.get(p, False))  # new adapter tensors: frozen
        for m in hf.modules():
            m.training = modes.get(m, hf.training)

    binding = _RewardBinding(name=adapter_name, peft_model=peft_model, plain=not is_peft, overrides=overrides)
    if is_peft:
        _set_active(peft_model, active)
    else:
        peft_model.base_model.disable_adapter_layers()
        binding.hook_handles = _install_plain_state_hooks(hf)
    bindings = dict(_bindings(hf))
    bindings[adapter_name] = binding
    hf.__dict__[_BINDINGS_ATTR] = bindings

    score = nn.Linear(info.score_shape[1], info.score_shape[0], bias=info.has_score_bias)
    score_state = {"weight": state[info.score_keys["weight"]]}
    if info.has_score_bias:
        score_state["bias"] = state[info.score_keys["bias"]]
    score.load_state_dict(score_state)
    score.to(device=_output_device(hf), dtype=_model_dtype(hf))
    score.requires_grad_(False)
    score.eval()
    return pretrained_model, score


def _unload(peft_model: Any, adapter_name: str, *, plain: bool) -> None:
    """Best-effort removal of a half-loaded adapter, so a failed load leaves the policy as it was."""
    try:
        if plain:
            peft_model.base_model.unload()
        else:
            peft_model.delete_adapter(adapter_name)
    except Exception:  # pragma: no cover - the original error matters more
        pass


def _override_pairs(
    hf: Any, info: AdapterInfo, state: dict[str, torch.Tensor]
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Base tensors the reward model trained (LoRA biases, extra saved modules), paired with its values."""
    pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
    for key, name in sorted(info.override_keys.items()):
        mod_path, _, attr = name.rpartition(".")
        module = _find_module(hf, mod_path)
        if module is None:
            raise InputError(f"the adapter replaces {name!r}, which the policy does not have.")
        if _is_tuner_layer(module):
            module = module.get_base_layer()  # type: ignore[operator]
        param = getattr(module, attr, None)
        if not isinstance(param, torch.Tensor):
            raise InputError(f"the adapter replaces {name!r}, which the policy does not have.")
        value = state[key]
        if tuple(value.shape) != tuple(param.shape):
            raise InputError(f"the adapter's {name} has shape {list(value.shape)}, the policy's {list(param.shape)}.")
        pairs.append((param, value.to(device=param.device, dtype=param.dtype)))  # type: ignore[arg-type]
    return pairs


def _find_module(hf: Any, path: str) -> nn.Module | None:
    for cand in (path, path.split(".", 1)[1] if "." in path else None):
        if cand is None:
            continue
        try:
            mod: nn.Module = hf.get_submodule(cand)
            return mod
        except AttributeError:
            continue
    return None


def _install_plain_state_hooks(hf: nn.Module) -> list[Any]:
    """Makes the injected (disabled) adapter invisible to ``state_dict``/``load_state_dict`` of a plain policy."""
    handles = []
    for module in hf.modules():
        if not _is_tuner_layer(module):
            continue
        handles.append(module.register_state_dict_post_hook(_strip_tuner_keys))  # type: ignore[no-untyped-call]
        handles.append(module.register_load_state_dict_pre_hook(_restore_tuner_keys))  # type: ignore[no-untyped-call]
    return handles


def _strip_tuner_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        value = state_dict.pop(key)
        if rest.startswith("base_layer."):
            state_dict[prefix + rest[len("base_layer.") :]] = value


def _restore_tuner_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest in ("weight", "bias"):  # a plain checkpoint's name for the wrapped layer's own tensors
            state_dict[prefix + "base_layer." + rest] = state_dict.pop(key)
    for name, tensor in module.named_parameters():
        if not name.startswith("base_layer.") and prefix + name not in state_dict:
            state_dict[prefix + name] = tensor.detach()  # the adapter's own tensors stay as they are


def _set_active(peft_model: Any, adapters: list[str]) -> None:
    if len(adapters) == 1:
        peft_model.set_adapter(adapters[0])
    elif adapters:
        peft_model.base_model.set_adapter(adapters)


# ---------------------------------------------------------------------------------------------- switching
def _binding_of(wrapper: Any) -> _RewardBinding:
    if not getattr(wrapper, "supports_rm_adapter", False) or getattr(wrapper, "score", None) is None:
        raise InputError(
            "this model has no reward adapter; attach one with `vhtool attach-reward-adapter` or load with "
            "from_pretrained(..., reward_adapter=ADAPTER)."
        )
    hf = _hf_model(wrapper.pretrained_model)
    binding = _bindings(hf).get(wrapper.rm_adapter_name)
    if binding is None:
        raise InputError(f"reward adapter {wrapper.rm_adapter_name!r} is not loaded into this model.")
    return binding


@contextmanager
def reward_adapter_active(wrapper: Any, *, ppo_adapter_name: str | None = None) -> Iterator[_RewardBinding]:
    """Switches ``wrapper``'s model to its reward adapter (eval mode) for the block, then switches back.

    Afterwards the previously active adapter is active again (``ppo_adapter_name`` instead, when given),
    a policy without an adapter of its own runs its plain base again, and every module's train/eval
    mode and every parameter's ``requires_grad`` are as before — also when the block raises.

    Raises:
        InputError: no reward adapter, or ``ppo_adapter_name`` names no adapter of the policy.
    """
    binding = _binding_of(wrapper)
    peft_model = binding.peft_model
    if binding.plain:
        if ppo_adapter_name is not None:
            raise InputError(
                f"ppo_adapter_name={ppo_adapter_name!r}, but the policy has no PEFT adapter of its own (it runs its "
                "plain base); leave ppo_adapter_name unset."
            )
        restore: list[str] = []
    else:
        if ppo_adapter_name is not None:
            if ppo_adapter_name not in peft_model.peft_config or ppo_adapter_name == binding.name:
                names = [n for n in peft_model.peft_config if n != binding.name]
                raise InputError(f"ppo_adapter_name {ppo_adapter_name!r} is not a policy adapter; it has {names}.")
            restore = [ppo_adapter_name]
        else:
            restore = list(peft_model.active_adapters)
    modes = {m: m.training for m in wrapper.modules()}
    grads = {p: p.requires_grad for p in wrapper.parameters()}
    saved: list[torch.Tensor] = []
    try:
        if binding.plain:
            peft_model.base_model.enable_adapter_layers()
        peft_model.set_adapter(binding.name)
        with torch.no_grad():
            for param, value in binding.overrides:
                saved.append(param.detach().clone())
                param.copy_(value)
        wrapper.eval()
        yield binding
    finally:
        with torch.no_grad():
            for (param, _), old in zip(binding.overrides, saved):
                param.copy_(old)
        if binding.plain:
            peft_model.base_model.disable_adapter_layers()
        else:
            _set_active(peft_model, restore)
        for m, mode in modes.items():
            m.training = mode
        for p, flag in grads.items():
            p.requires_grad_(flag)


def _backbone(hf: Any) -> nn.Module | None:
    prefix = getattr(hf, "base_model_prefix", "")
    backbone = getattr(hf, prefix, None) if prefix else None
    return backbone if isinstance(backbone, nn.Module) and backbone is not hf else None


def compute_reward_score(
    wrapper: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    ppo_adapter_name: str | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Token-level reward scores ``(batch, seq, 1)`` from the wrapper's reward adapter and score head.

    The hidden state is the backbone's ``last_hidden_state`` (what ``…ForSequenceClassification`` feeds
    its ``score``), computed under ``torch.no_grad`` with the reward adapter active; the LM head is not
    run. Use :func:`sequence_rewards` to read one reward per sequence at its last real token.

    Args:
        wrapper: a value-head model with a reward adapter.
        input_ids: ``(batch, seq)`` token ids.
        attention_mask: ``(batch, seq)``; padding may be on either side.
        ppo_adapter_name: the policy adapter to make active afterwards (default: the one active before).
        **kwargs: passed to the backbone (e.g. ``position_ids``).
    """
    kwargs.pop("output_hidden_states", None)
    kwargs.pop("return_dict", None)
    with reward_adapter_active(wrapper, ppo_adapter_name=ppo_adapter_name), torch.no_grad():
        hf = _hf_model(wrapper.pretrained_model)
        backbone = _backbone(hf)
        if backbone is not None:
            kwargs.setdefault("use_cache", False)
            out = backbone(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        else:  # a model that is its own backbone: take the LM head's input
            lm_head = hf.get_output_embeddings()
            if lm_head is None:
                raise InputError(
                    f"{type(hf).__name__}: cannot find its backbone or LM head to read hidden states from."
                )
            with LastHidden(lm_head, "input") as probe:
                hf(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            assert probe.value is not None
            hidden = probe.value
        score: nn.Module = wrapper.score
        weight = score.weight
        if hidden.device != weight.device or hidden.dtype != weight.dtype:
            hidden = hidden.to(device=weight.device, dtype=weight.dtype)
        scores: torch.Tensor = score(hidden)
    return scores


# ---------------------------------------------------------------------------------------------- checkpoints
def wire_recorded_adapter(model: Any, resolved: Any) -> None:
    """Loads the reward adapter a checkpoint's ``vhtool.json`` records, so ``compute_reward_score`` works at once.

    Args:
        model: the value-head wrapper just built by ``from_pretrained``.
        resolved: the :class:`vhtool.models.loading.Resolved` the checkpoint came from.

    Raises:
        CheckpointError: the entry is malformed, the subfolder is missing, or its files do not match the
            hashes recorded in ``vhtool.json``.
    """
    entry = resolved.manifest_reward
    name = entry.name if entry is not None else None
    sub = entry.subfolder if entry is not None and entry.subfolder is not None else name
    if entry is None or not name or not sub:
        raise CheckpointError(f"{resolved.name}: vhtool.json has a malformed reward_adapter entry ({entry!r}).")
    if resolved.local_dir is not None:
        path = safe_member(Path(resolved.local_dir), sub, f"{MANIFEST_FILE}'s reward_adapter.subfolder")
    else:
        path = _download_subfolder(resolved, sub)
    if not (path / ADAPTER_CONFIG).is_file():
        raise CheckpointError(
            f"{resolved.name}: vhtool.json records the reward adapter in {sub!r}, which is missing or has no "
            f"{ADAPTER_CONFIG}; attach the adapter again (vhtool attach-reward-adapter)."
        )
    if entry.files is not None and not entry.files_listed:
        for fname, meta in entry.files.items():
            if resolved.local_dir is None and fname not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                continue  # only these two are downloaded
            f = adapter_member(path, fname, "a reward adapter file")
            want = meta.sha256 if meta is not None else None
            if not f.is_file() or (want and hash_file(f) != want):
                raise CheckpointError(
                    f"{path / fname}: does not match the sha256 recorded in vhtool.json (corrupt or edited); "
                    "attach the adapter again."
                )
    _, score = load_reward_adapter(model.pretrained_model, str(path), adapter_name=name, token=resolved.token)
    model.score = score
    model.supports_rm_adapter = True
    model.rm_adapter_name = name


def _download_subfolder(resolved: Any, sub: str) -> Path:
    from vhtool.hub.download import snapshot

    if sub.startswith("/") or ".." in Path(sub).parts:
        raise CheckpointError(
            f"{resolved.repo_id}: vhtool.json names reward adapter subfolder {sub!r}, outside the repo."
        )
    snap = snapshot(
        resolved.repo_id,
        revision=resolved.revision,
        what="the reward adapter",
        patterns=[f"{sub}/{ADAPTER_CONFIG}", f"{sub}/{ADAPTER_WEIGHTS}"],
        token=resolved.token,
        cache_dir=resolved.cache_dir,
    )
    return snap.path / sub
