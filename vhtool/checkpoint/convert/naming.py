"""The conventions' names: target class names, head tensor names, and the target's ``config.json``. Pure data."""

from __future__ import annotations

from typing import Any

from vhtool.checkpoint.conventions import CONVENTIONS, VHEAD_BIAS, VHEAD_WEIGHT
from vhtool.choices import HEAD_NAMES as HEAD_NAMES

TARGETS = CONVENTIONS
CLASSIFIER_TARGETS = ("seq-cls", "token-cls")

#: Keys OpenRLHF keeps in ``config.json`` for reward normalisation and the head's name.
NORM_KEYS = ("normalize_reward", "mean", "std", "value_head_prefix")

_ARCH_SUFFIXES = ("LMHeadModel", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification")
#: Families whose causal class is ``<Stem>LMHeadModel`` rather than ``<Stem>ForCausalLM``.
_LMHEAD_STEMS = frozenset({"GPT2", "OpenAIGPT", "CTRL"})
#: Class-name stems by ``model_type``, for configs whose ``architectures`` is missing or custom (OpenRLHF).
_STEMS = {
    "gpt2": "GPT2",
    "gpt_neo": "GPTNeo",
    "gpt_neox": "GPTNeoX",
    "gpt_bigcode": "GPTBigCode",
    "gptj": "GPTJ",
    "opt": "OPT",
    "bloom": "Bloom",
    "falcon": "Falcon",
    "llama": "Llama",
    "mistral": "Mistral",
    "mixtral": "Mixtral",
    "qwen2": "Qwen2",
    "qwen2_moe": "Qwen2Moe",
    "qwen3": "Qwen3",
    "qwen3_moe": "Qwen3Moe",
    "gemma": "Gemma",
    "gemma2": "Gemma2",
    "phi": "Phi",
    "phi3": "Phi3",
    "stablelm": "StableLm",
    "starcoder2": "Starcoder2",
}
#: Families whose ``...ForTokenClassification`` names its head ``classifier`` (the others use ``score``).
_CLASSIFIER_FAMILIES = frozenset({"gpt2", "gpt_neo", "gpt_neox", "gpt_bigcode", "bloom", "falcon", "mpt", "biogpt"})


def transformers_has(class_name: str) -> bool:
    """Whether the installed transformers has a class called ``class_name``, without importing torch.

    transformers' lazy top-level module lists every class it can import; a name it does not list can never be
    loaded (OPT has no ``OPTForTokenClassification``, for one).
    """
    import transformers

    return class_name in dir(transformers)


def target_architecture(config: dict[str, Any], target: str) -> str | None:
    """The transformers class name for ``target`` in ``config``'s family, or None when it cannot be named.

    Derived from the source's ``architectures`` by swapping the suffix (``GPT2LMHeadModel`` <->
    ``GPT2ForSequenceClassification``), else from ``model_type`` through a small table.
    """
    stem: str | None = None
    archs = config.get("architectures")
    if isinstance(archs, list):
        for a in archs:
            if isinstance(a, str):
                for suffix in _ARCH_SUFFIXES:
                    if a.endswith(suffix) and len(a) > len(suffix):
                        stem = a[: -len(suffix)]
                        break
            if stem:
                break
    if stem is None:
        stem = _STEMS.get(str(config.get("model_type", "")))
    if stem is None:
        return None
    if target == "seq-cls":
        return f"{stem}ForSequenceClassification"
    if target == "token-cls":
        return f"{stem}ForTokenClassification"
    if config.get("is_encoder_decoder"):
        return f"{stem}ForConditionalGeneration"
    return f"{stem}LMHeadModel" if stem in _LMHEAD_STEMS else f"{stem}ForCausalLM"


def default_head_name(config: dict[str, Any], target: str, normalization: dict[str, Any]) -> str:
    """The head name a classifier target gets when ``--head-name`` is not given."""
    prefix = config.get("value_head_prefix", normalization.get("value_head_prefix"))
    if prefix in HEAD_NAMES:
        return str(prefix)
    if target == "token-cls" and config.get("model_type") in _CLASSIFIER_FAMILIES:
        return "classifier"
    return "score"


def target_head_keys(target: str, head_name: str) -> tuple[str, str | None]:
    """``(weight key, bias key or None)`` of the head in ``target``."""
    if target in ("vhtool", "sidecar"):
        return VHEAD_WEIGHT, VHEAD_BIAS
    if target == "token-cls" and head_name != "value_head":
        return f"{head_name}.weight", f"{head_name}.bias"
    return f"{head_name}.weight", None


def target_config(
    src: dict[str, Any],
    *,
    to: str,
    head_name: str,
    normalization: dict[str, Any],
    pad_token_id: int | None,
) -> dict[str, Any]:
    """``config.json`` for the target: class name, one label, pad token, normalisation statistics."""
    config = dict(src)
    arch = target_architecture(src, to)
    if arch is not None:
        config["architectures"] = [arch]
    elif to in CLASSIFIER_TARGETS:
        config.pop("architectures", None)
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    if to in CLASSIFIER_TARGETS:
        config["id2label"] = {"0": "LABEL_0"}
        config["label2id"] = {"LABEL_0": 0}
        config.pop("num_labels", None)
        for key in ("normalize_reward", "mean", "std"):
            if key in normalization and key not in config:
                config[key] = normalization[key]
        if head_name == "value_head" or "value_head_prefix" in config:
            config["value_head_prefix"] = head_name
    return config
