"""The value-head classes: TRL 1.12.0's API, without its known defects.

Differences from TRL that users can rely on (each has a test):

* a local sharded value-head checkpoint reloads (TRL treats the directory as a Hub id);
* a checkpoint with no ``v_head.*`` weights is reported (a warning and ``model.v_head_loaded``),
  never silently left random;
* backbone tensors missing from a checkpoint (or unused by the architecture) are reported in one warning
  naming them and in ``model.load_report``; only the expected ``v_head.*`` lines of transformers' load
  report are silenced;
* ``past_key_values`` reaches the wrapped model under the name its ``forward`` takes (``cache`` in current
  transformers), so no deprecation is triggered;
* an unknown ``v_head_init_strategy`` raises;
* ``forward`` captures the last hidden state with a hook instead of asking for all L+1 states;
* ``state_dict()`` round-trips through ``load_state_dict()``;
* ``save_pretrained`` of a PEFT model writes the value head as ``model.safetensors`` beside the adapter
  (safetensors, never a pickle: the file TRL 1.12.0 reads a PEFT folder's value head from) into a
  directory that exists.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vhtool.checkpoint.catalogue import SINGLE_FILE
from vhtool.errors import InputError
from vhtool.models.hidden import LastHidden, mapped_output_device
from vhtool.models.loading import LoadReport, find_value_head_state, own_load_report, resolve_pretrained

#: Where a PEFT policy's value head is saved: TRL 1.12.0 loads ``model.safetensors`` of the adapter folder.
#: vhtool reads it there and in ``value_head.safetensors`` (what vhtool 0.1.0 wrote).
PEFT_HEAD_FILE = SINGLE_FILE

logger = logging.getLogger("vhtool")

V_HEAD_ARGS = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")
INIT_STRATEGIES = (None, "normal")


def config_hidden_size(config: Any) -> int:
    """The width of the hidden state the value head reads, from a transformers config object."""
    for attr in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    text: Any = getattr(config, "text_config", None)
    if text is not None and getattr(text, "hidden_size", None):
        return int(text.hidden_size)
    decoder: Any = getattr(config, "decoder", None)
    if getattr(config, "is_encoder_decoder", False) and getattr(decoder, "hidden_size", None):
        return int(decoder.hidden_size)
    raise InputError(
        "cannot determine the hidden size from the model config (looked for word_embed_proj_dim, hidden_size, "
        "n_embd, d_model, text_config.hidden_size, decoder.hidden_size)."
    )


class ValueHead(nn.Module):
    """A scalar head on the last hidden state: dropout, then ``Linear(hidden, 1)``, computed in the head's dtype."""

    def __init__(self, config: Any, **kwargs: Any) -> None:
        super().__init__()
        if hasattr(config, "summary_dropout_prob"):
            summary_dropout_prob = config.summary_dropout_prob
        else:
            summary_dropout_prob = kwargs.pop("summary_dropout_prob", 0.1)
        self.dropout: nn.Module = nn.Dropout(summary_dropout_prob) if summary_dropout_prob else nn.Identity()
        self.summary: nn.Linear = nn.Linear(config_hidden_size(config), 1)
        self.flatten = nn.Flatten()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = self.dropout(hidden_states)
        if output.dtype != self.summary.weight.dtype:  # values in fp32 for numerical stability
            output = output.to(self.summary.weight.dtype)
        out: torch.Tensor = self.summary(output)
        return out


@functools.cache
def _cache_name_of(model_class: type) -> str:
    """The keyword a model class's ``forward`` takes the KV cache under.

    transformers renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40); releases
    before the rename take only ``past_key_values``. The signature says which one this installation has.
    """
    try:
        params = inspect.signature(model_class.forward).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_kwargs(pretrained_model: Any, kwargs: dict[str, Any], past_key_values: Any, *, prefix_tuning: bool) -> None:
    """Puts the KV cache (given as ``past_key_values`` or ``cache``) into ``kwargs`` under the model's own name.

    Prefix tuning supplies its own cache (the prefixes): a caller's is dropped there, as TRL does.
    """
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None:
        raise InputError("give the KV cache as past_key_values or as cache, not both.")
    cache = cache if cache is not None else past_key_values
    if cache is None or prefix_tuning:
        return
    get_base = getattr(pretrained_model, "get_base_model", None)  # a PEFT model passes it on to the base's forward
    base = get_base() if callable(get_base) else pretrained_model
    kwargs[_cache_name_of(type(base))] = cache  # type: ignore[arg-type]  # a class is hashable


def _output_cache(out: Any) -> Any:
    """The KV cache a model output carries (``cache``, or ``past_key_values`` before the rename), without a warning."""
    fields = getattr(out, "__dataclass_fields__", {})
    if "cache" in fields:
        return out.cache
    return getattr(out, "past_key_values", None)


def _peft_types() -> tuple[type, ...]:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return ()
    return (PeftModel,)


class PreTrainedModelWrapper(nn.Module):
    """Wraps a ``transformers.PreTrainedModel`` (or a PEFT model around one) and adds a value head.

    Attributes:
        pretrained_model: the wrapped model.
        v_head_loaded: whether value-head weights were found and loaded by ``from_pretrained``.
        v_head_source: where they came from (a file name or Hub path), or ``None``.
        load_report: what loading the backbone from files reported (missing and unexpected tensors), or
            ``None`` when ``from_pretrained`` was given a model object (nothing was loaded from files).
    """

    transformers_parent_class: Any = None
    supported_args: tuple[str, ...] = V_HEAD_ARGS
    supported_modules = ("v_head",)
    supported_rm_modules = ("score",)
    lm_head_namings: tuple[str, ...] = ("lm_head", "embed_out", "output_projection")
    v_head: ValueHead

    def __init__(
        self,
        pretrained_model: Any = None,
        score_module: nn.Module | None = None,
        supports_rm_adapter: bool = False,
        rm_adapter_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained_model is None:
            raise InputError("PreTrainedModelWrapper needs a pretrained_model to wrap.")
        self.pretrained_model = pretrained_model
        self.config = pretrained_model.config
        self.prepare_inputs_for_generation = getattr(pretrained_model, "prepare_inputs_for_generation", None)
        self.is_loaded_in_8bit = getattr(pretrained_model, "is_loaded_in_8bit", False)
        self.is_loaded_in_4bit = getattr(pretrained_model, "is_loaded_in_4bit", False)
        self.is_sequential_parallel = False
        for name in ("gradient_checkpointing_disable", "gradient_checkpointing_enable", "enable_input_require_grads"):
            if hasattr(pretrained_model, name):
                setattr(self, name, getattr(pretrained_model, name))
        self.supports_rm_adapter = supports_rm_adapter
        self.rm_adapter_name = rm_adapter_name
        self.policy_adapter_name = "default"
        self.is_peft_model = isinstance(pretrained_model, _peft_types())
        self.v_head_loaded = False
        self.v_head_source: str | None = None
        self.load_report: LoadReport | None = None
        self.current_device: Any = "cpu"
        if score_module is not None:
            self.score = score_module

    @property
    def missing_keys(self) -> tuple[str, ...]:
        """Backbone tensors the checkpoint lacked (initialised at random by transformers); empty when none."""
        return self.load_report.missing if self.load_report is not None else ()

    @property
    def unexpected_keys(self) -> tuple[str, ...]:
        """Tensors of the checkpoint the architecture did not use (``v_head.*`` excluded); empty when none."""
        return self.load_report.unexpected if self.load_report is not None else ()

    # ------------------------------------------------------------------ loading
    @classmethod
    def _split_kwargs(cls, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Splits kwargs into (value-head args, args for transformers, ``prepare_model_for_kbit_training`` args)."""
        try:
            from peft import prepare_model_for_kbit_training

            kbit_args = set(prepare_model_for_kbit_training.__code__.co_varnames) - {"model"}
        except ImportError:  # pragma: no cover
            kbit_args = set()
        supported: dict[str, Any] = {}
        unsupported: dict[str, Any] = {}
        peft_kwargs: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in cls.supported_args:
                supported[key] = value
            elif key in kbit_args:
                peft_kwargs[key] = value
            else:
                unsupported[key] = value
        return supported, unsupported, peft_kwargs

    @staticmethod
    def _check_v_head_kwargs(v_head_kwargs: Mapping[str, Any]) -> None:
        strategy = v_head_kwargs.get("v_head_init_strategy")
        if strategy not in INIT_STRATEGIES:
            raise InputError(f"unknown v_head_init_strategy {strategy!r}; use None (random) or 'normal'.")
        rng = v_head_kwargs.get("v_head_initializer_range", 0.2)
        if not isinstance(rng, (int, float)) or not rng > 0:
            raise InputError(f"v_head_initializer_range must be a positive number, got {rng!r}.")
        p = v_head_kwargs.get("summary_dropout_prob")
        if p is not None and not (isinstance(p, (int, float)) and 0 <= p < 1):
            raise InputError(f"summary_dropout_prob must be in [0, 1), got {p!r}.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """Loads a model (local path, Hub id, ``builtin:*`` or a model object) and its value head.

        Value-head args (``summary_dropout_prob``, ``v_head_initializer_range``,
        ``v_head_init_strategy``), PEFT args (``peft_config``, ``reward_adapter``,
        ``reward_adapter_name``, ``is_trainable``, ``prepare_model_for_kbit_training`` args) and
        ``allow_pickle`` are taken out; the rest goes to ``transformers``' ``from_pretrained``.
        When no value-head weights are found, the head is initialised as asked, a warning is
        issued and ``v_head_loaded`` is ``False``. When backbone tensors are missing from the checkpoint
        (transformers initialises them at random) or unused by the architecture, one warning names them and
        ``load_report`` (``missing_keys``, ``unexpected_keys``) records them; the load itself goes on, as
        transformers' does.
        """
        peft_config = kwargs.pop("peft_config", None)
        reward_adapter = kwargs.pop("reward_adapter", None)
        reward_adapter_name = kwargs.pop("reward_adapter_name", "reward_adapter")
        is_trainable = kwargs.pop("is_trainable", False)
        allow_pickle = bool(kwargs.pop("allow_pickle", False))
        v_head_kwargs, pretrained_kwargs, kbit_kwargs = cls._split_kwargs(kwargs)
        cls._check_v_head_kwargs(v_head_kwargs)
        token = pretrained_kwargs.get("token")
        revision = pretrained_kwargs.get("revision")
        cache_dir = pretrained_kwargs.get("cache_dir")
        if reward_adapter is not None and not isinstance(reward_adapter, (str, os.PathLike)):
            raise InputError("reward_adapter must be a local path or a Hub id of a reward-model adapter.")

        try:
            from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
        except ImportError:  # pragma: no cover
            PeftConfig = PeftModel = None  # type: ignore[assignment,misc]  # noqa: N806

        quant = pretrained_kwargs.get("quantization_config")
        kbit = bool(getattr(quant, "load_in_8bit", False) or getattr(quant, "load_in_4bit", False))
        if peft_config is not None and PeftConfig is not None and not isinstance(peft_config, PeftConfig):
            raise InputError("peft_config must be a peft.PeftConfig instance.")

        source: Any = pretrained_model_name_or_path
        pretrained_model: Any
        if isinstance(source, (str, os.PathLike)):
            resolved = resolve_pretrained(str(source), revision=revision, token=token, cache_dir=cache_dir)
            adapter_cfg = resolved.adapter_config_dir
            if adapter_cfg is not None and PeftConfig is not None:
                if peft_config is not None:
                    logger.warning("peft_config ignored: %s already holds a trained PEFT adapter.", source)
                trained = PeftConfig.from_pretrained(str(adapter_cfg))
                base, report = cls._load_base(trained.base_model_name_or_path, model_args, pretrained_kwargs)
                pretrained_model = PeftModel.from_pretrained(
                    base, str(resolved.load_from), is_trainable=is_trainable, token=token
                )
            else:
                pretrained_model, report = cls._load_base(str(resolved.load_from), model_args, pretrained_kwargs)
                if peft_config is not None:
                    if kbit:
                        pretrained_model = prepare_model_for_kbit_training(pretrained_model, **kbit_kwargs)  # type: ignore[no-untyped-call]
                    pretrained_model = get_peft_model(pretrained_model, peft_config)
        elif hasattr(source, "config") and isinstance(source, nn.Module):
            resolved = None
            report = None
            pretrained_model = source
            if peft_config is not None and not isinstance(source, _peft_types()):
                if getattr(source, "is_loaded_in_8bit", False) or getattr(source, "is_loaded_in_4bit", False):
                    pretrained_model = prepare_model_for_kbit_training(pretrained_model, **kbit_kwargs)  # type: ignore[no-untyped-call]
                pretrained_model = get_peft_model(pretrained_model, peft_config)
        else:
            raise InputError(
                f"pretrained_model_name_or_path must be a path, a Hub id or a PreTrainedModel, got {type(source)}."
            )

        active = getattr(pretrained_model, "active_peft_config", None)
        if active is not None and getattr(active, "is_prompt_learning", False):
            raise InputError("prompt-learning PEFT configs are not supported for value-head models.")

        multi: dict[str, Any] = {"supports_rm_adapter": False}
        if reward_adapter is not None:
            from vhtool.models.reward import load_reward_adapter

            pretrained_model, score = load_reward_adapter(
                pretrained_model, str(reward_adapter), adapter_name=reward_adapter_name, token=token
            )
            multi = {"score_module": score, "supports_rm_adapter": True, "rm_adapter_name": reward_adapter_name}

        model = cls(pretrained_model, **multi, **v_head_kwargs)
        model.load_report = report
        if report is not None and not report.complete:
            # once, here: transformers' own table of these keys is left out of its log (see _load_base)
            warnings.warn(f"{str(source)!r}: {report.describe()}.", stacklevel=2)
        if resolved is not None:
            state, where = find_value_head_state(resolved, allow_pickle=allow_pickle)
        else:
            full = source.state_dict()
            state = {k: v for k, v in full.items() if k.startswith("v_head.")}
            where = "the model's state_dict" if state else None
        model.post_init(state_dict=state)
        if where is None:
            model.v_head_loaded = False
            label = source if isinstance(source, (str, os.PathLike)) else type(source).__name__
            msg = (
                f"no value-head weights (v_head.*) found for {str(label)!r}; the value head was "
                f"initialised ({v_head_kwargs.get('v_head_init_strategy') or 'random'}). This is expected only when "
                "starting PPO from a plain model."
            )
            warnings.warn(msg, stacklevel=2)  # once: a logger.warning too would print it twice without logging set up
        else:
            model.v_head_loaded = True
            model.v_head_source = where
        if resolved is not None and resolved.manifest_reward is not None and reward_adapter is None:
            from vhtool.models.reward import wire_recorded_adapter

            wire_recorded_adapter(model, resolved)
        return model

    @classmethod
    def _load_base(
        cls, path: str, model_args: tuple[Any, ...], pretrained_kwargs: dict[str, Any]
    ) -> tuple[Any, LoadReport]:
        """The wrapped model and what its load reported, ``v_head.*`` (ours, not unexpected) left out.

        Only transformers' load-report table is kept out of its log; the wrapper's one warning replaces it.
        Every other message of the load shows as the user's transformers verbosity says.
        """
        kwargs = {k: v for k, v in pretrained_kwargs.items() if k != "output_loading_info"}
        with own_load_report():
            model, info = cls.transformers_parent_class.from_pretrained(
                path, *model_args, output_loading_info=True, **kwargs
            )
        return model, LoadReport.from_loading_info(info, model)

    def post_init(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Loads ``v_head.*`` entries of ``state_dict`` into the value head and places it next to the LM head."""
        head_state = {k[len("v_head.") :]: v for k, v in state_dict.items() if k.startswith("v_head.")}
        if head_state:
            unknown = set(head_state) - set(self.v_head.state_dict())
            missing = set(self.v_head.state_dict()) - set(head_state)
            if unknown or missing:
                raise InputError(
                    f"value-head weights do not match ValueHead: missing {sorted(missing)}, "
                    f"unexpected {sorted(unknown)}."
                )
            expected = self.v_head.summary.weight.shape
            if tuple(head_state["summary.weight"].shape) != tuple(expected):
                raise InputError(
                    f"value head has shape {list(head_state['summary.weight'].shape)}, "
                    f"the model needs {list(expected)}."
                )
            self.v_head.load_state_dict(head_state)
        target = mapped_output_device(self.pretrained_model)
        if target is not None:  # accelerate's device map: next to the backbone's output (never on meta)
            self.v_head.to(target)
            self.is_sequential_parallel = True

    def _has_lm_head(self) -> bool:
        getter = getattr(self.pretrained_model, "get_output_embeddings", None)
        if getter is not None:
            try:
                if getter() is not None:
                    return True
            except (NotImplementedError, AttributeError):
                pass
        return any(any(n in name for n in self.lm_head_namings) for name, _ in self.pretrained_model.named_modules())

    def _init_weights(self, **kwargs: Any) -> None:
        """Initialises the value head: ``None`` keeps nn.Linear's init, ``"normal"`` draws N(0, range) and bias 0."""
        initializer_range = kwargs.pop("v_head_initializer_range", 0.2)
        strategy = kwargs.pop("v_head_init_strategy", None)
        if strategy not in INIT_STRATEGIES:
            raise InputError(f"unknown v_head_init_strategy {strategy!r}; use None (random) or 'normal'.")
        if strategy == "normal":
            with torch.no_grad():
                self.v_head.summary.weight.normal_(mean=0.0, std=initializer_range)
                self.v_head.summary.bias.zero_()

    # ------------------------------------------------------------------ state
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's keys unchanged (none for a PEFT model) plus ``v_head.summary.{weight,bias}``."""
        if args or kwargs.get("destination") is not None:
            # nn.Module internals (e.g. a parent module's state_dict) call with (destination, prefix, ...).
            return super().state_dict(*args, **kwargs)
        state: dict[str, Any] = {} if self.is_peft_model else self.pretrained_model.state_dict(**kwargs)
        for k, v in self.v_head.state_dict(**kwargs).items():
            state[f"v_head.{k}"] = v
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Accepts what :meth:`state_dict` returns (and nn.Module's ``pretrained_model.``-prefixed form)."""
        head: dict[str, Any] = {}
        base: dict[str, Any] = {}
        for k, v in state_dict.items():
            if k.startswith("v_head."):
                head[k[len("v_head.") :]] = v
            elif k.startswith("pretrained_model."):
                base[k[len("pretrained_model.") :]] = v
            elif k.startswith("score.") and hasattr(self, "score"):
                continue
            else:
                base[k] = v
        r1 = self.v_head.load_state_dict(head, strict=strict, assign=assign)
        if self.is_peft_model and not base:
            return r1
        r2 = self.pretrained_model.load_state_dict(base, strict=strict, assign=assign)
        return torch.nn.modules.module._IncompatibleKeys(
            [f"v_head.{k}" for k in r1.missing_keys] + list(r2.missing_keys),
            [f"v_head.{k}" for k in r1.unexpected_keys] + list(r2.unexpected_keys),
        )

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """Saves like ``transformers``' ``save_pretrained``, with the value head among the model's tensors.

        For a PEFT model, the adapter is saved by PEFT and the value head goes to ``model.safetensors``
        beside it: safetensors (no pickle), under the name TRL 1.12.0 reads it from. The save goes to a
        temporary sibling first and replaces only the files it supersedes (see :mod:`vhtool.models.saving`).
        A process that is not the main one (``is_main_process=False``, or a rank other than 0) writes and
        deletes nothing in the folder.
        """
        save_directory = Path(args[0] if args else kwargs["save_directory"])
        if kwargs.get("push_to_hub"):  # transformers names the repo after the folder: save there directly
            return self._save_into(save_directory, *args[1:], **kwargs)
        from vhtool.models.saving import save_replacing, saves_on_this_rank

        kwargs.pop("save_directory", None)
        rest = list(args[1:])
        if rest and not self.is_peft_model:  # transformers' second parameter (PEFT's is safe_serialization)
            kwargs["is_main_process"] = rest.pop(0)
        # Decided once, here, and passed down, so the wrapped model (or PEFT) and the move into place agree.
        main = saves_on_this_rank(bool(kwargs.get("is_main_process", True)))
        kwargs["is_main_process"] = main
        return save_replacing(save_directory, lambda tmp: self._save_into(tmp, *rest, **kwargs), main_process=main)

    def _save_into(self, save_directory: Path, *args: Any, **kwargs: Any) -> Any:
        if self.is_peft_model:
            from safetensors.torch import save_file

            kwargs.pop("state_dict", None)
            if self.supports_rm_adapter and "selected_adapters" not in kwargs:
                # the reward adapter is loaded without its score head: saving it here would write a broken copy
                own = [a for a in self.pretrained_model.peft_config if a != self.rm_adapter_name]
                kwargs["selected_adapters"] = own
            result = self.pretrained_model.save_pretrained(save_directory, *args, **kwargs)
            if not kwargs.get("is_main_process", True):
                return result  # like PEFT's own files: only the main process writes the head
            save_directory.mkdir(parents=True, exist_ok=True)
            head = {f"v_head.{k}": v.detach().contiguous().cpu() for k, v in self.v_head.state_dict().items()}
            save_file(head, str(save_directory / PEFT_HEAD_FILE), metadata={"format": "pt"})
            return result
        if kwargs.get("state_dict") is None:
            kwargs["state_dict"] = self.state_dict()
        with self._v_head_attached():
            return self.pretrained_model.save_pretrained(save_directory, *args, **kwargs)

    @contextmanager
    def _v_head_attached(self) -> Iterator[None]:
        """Temporarily makes the value head a submodule of the wrapped model, so its own save/push include it."""
        had = "v_head" in self.pretrained_model._modules
        self.pretrained_model.v_head = self.v_head
        try:
            yield
        finally:
            if not had:
                del self.pretrained_model.v_head

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        """``transformers``' ``push_to_hub`` of the wrapped model, value head included."""
        with self._v_head_attached():
            return self.pretrained_model.push_to_hub(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Passes through to the wrapped model's ``generate``."""
        return self.pretrained_model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ reward adapter
    def compute_reward_score(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        ppo_adapter_name: str | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Per-token reward scores ``(batch, seq, num_labels)`` from the attached reward adapter."""
        from vhtool.models.reward import compute_reward_score

        return compute_reward_score(self, input_ids, attention_mask, ppo_adapter_name=ppo_adapter_name, **kwargs)

    @classmethod
    def add_and_load_reward_modeling_adapter(
        cls,
        pretrained_model: Any,
        adapter_model_id: str,
        adapter_name: str = "reward_model_adapter",
        token: str | None = None,
    ) -> nn.Module:
        """Loads a reward adapter into ``pretrained_model`` (a PEFT model) and returns its frozen score head."""
        from vhtool.models.reward import load_reward_adapter

        _, score = load_reward_adapter(pretrained_model, adapter_model_id, adapter_name=adapter_name, token=token)
        return score


class AutoModelForCausalLMWithValueHead(PreTrainedModelWrapper):
    """A causal LM with a value head: ``forward`` returns ``(lm_logits, loss, value)``, value ``(batch, seq)``."""

    transformers_parent_class: Any = None  # set lazily to transformers.AutoModelForCausalLM

    def __init__(self, pretrained_model: Any, **kwargs: Any) -> None:
        super().__init__(pretrained_model, **kwargs)
        v_head_kwargs, _, _ = self._split_kwargs(kwargs)
        self._check_v_head_kwargs(v_head_kwargs)
        if not self._has_lm_head():
            raise InputError(
                f"{type(pretrained_model).__name__} has no language-model head; load it with an "
                "AutoModelForCausalLM class (or `vhtool convert` a classifier checkpoint)."
            )
        self.v_head = ValueHead(self.pretrained_model.config, **v_head_kwargs)
        self._init_weights(**v_head_kwargs)

    def _hidden_probe(self) -> LastHidden | None:
        lm_head = self.pretrained_model.get_output_embeddings()
        return LastHidden(lm_head, "input") if lm_head is not None else None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        return_past_key_values: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Runs the wrapped model; the value is the head applied to the last hidden state (the LM head's input).

        The KV cache may be given as ``past_key_values`` (TRL's name) or ``cache`` (transformers' current name);
        it reaches the wrapped model under the name its ``forward`` takes, so no deprecation is triggered.
        """
        active = getattr(self.pretrained_model, "active_peft_config", None) if self.is_peft_model else None
        prefix_tuning = active is not None and getattr(active, "peft_type", None) == "PREFIX_TUNING"
        _cache_kwargs(self.pretrained_model, kwargs, past_key_values, prefix_tuning=prefix_tuning)
        probe = self._hidden_probe()
        if probe is None or kwargs.get("output_hidden_states"):
            kwargs["output_hidden_states"] = True
            out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            last_hidden = out.hidden_states[-1]
            if probe is not None:
                probe.handle.remove()
        else:
            with probe:
                out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            assert probe.value is not None
            last_hidden = probe.value
        if last_hidden.device != self.v_head.summary.weight.device:
            last_hidden = last_hidden.to(self.v_head.summary.weight.device)
        value = self.v_head(last_hidden).squeeze(-1)
        lm_logits = out.logits
        if lm_logits.dtype != torch.float32:
            lm_logits = lm_logits.float()
        if return_past_key_values:
            return (lm_logits, out.loss, value, _output_cache(out))
        return (lm_logits, out.loss, value)


class AutoModelForSeq2SeqLMWithValueHead(PreTrainedModelWrapper):
    """An encoder-decoder LM with a value head on the decoder's last hidden state."""

    transformers_parent_class: Any = None  # set lazily to transformers.AutoModelForSeq2SeqLM

    def __init__(self, pretrained_model: Any, **kwargs: Any) -> None:
        super().__init__(pretrained_model, **kwargs)
        v_head_kwargs, _, _ = self._split_kwargs(kwargs)
        self._check_v_head_kwargs(v_head_kwargs)
        self.is_encoder_decoder = True
        if not self._has_lm_head():
            raise InputError(
                f"{type(pretrained_model).__name__} has no language-model head; load it with AutoModelForSeq2SeqLM."
            )
        self.v_head = ValueHead(self.pretrained_model.config, **v_head_kwargs)
        self._init_weights(**v_head_kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        return_past_key_values: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Runs the wrapped model; the value is the head applied to the decoder's last hidden state.

        The KV cache is passed on as in :meth:`AutoModelForCausalLMWithValueHead.forward`.
        """
        active = getattr(self.pretrained_model, "active_peft_config", None) if self.is_peft_model else None
        prefix_tuning = active is not None and getattr(active, "peft_type", None) == "PREFIX_TUNING"
        _cache_kwargs(self.pretrained_model, kwargs, past_key_values, prefix_tuning=prefix_tuning)
        decoder = self.pretrained_model.get_decoder()
        if kwargs.get("output_hidden_states"):
            out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            last_hidden = out.decoder_hidden_states[-1]
        else:
            with LastHidden(decoder, "output") as probe:
                out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            assert probe.value is not None
            last_hidden = probe.value
        if last_hidden.device != self.v_head.summary.weight.device:
            last_hidden = last_hidden.to(self.v_head.summary.weight.device)
        value = self.v_head(last_hidden).squeeze(-1)
        lm_logits = out.logits
        if lm_logits.dtype != torch.float32:
            lm_logits = lm_logits.float()
        if return_past_key_values:
            return (lm_logits, out.loss, value, _output_cache(out))
        return (lm_logits, out.loss, value)


def _bind_parents() -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    AutoModelForCausalLMWithValueHead.transformers_parent_class = AutoModelForCausalLM
    AutoModelForSeq2SeqLMWithValueHead.transformers_parent_class = AutoModelForSeq2SeqLM


_bind_parents()
