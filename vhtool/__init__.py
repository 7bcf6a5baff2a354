"""vhtool: value-head checkpoints for RLHF — build, inspect, score and publish them, out of core.

The torch-world names (the value-head classes, ``create_reference_model``...) are imported lazily
so that ``import vhtool`` and the command line start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from vhtool._version import __version__  # noqa: F401  (re-exported)

_LAZY = {
    "AutoModelForCausalLMWithValueHead": "vhtool.models.value_head",
    "AutoModelForSeq2SeqLMWithValueHead": "vhtool.models.value_head",
    "PreTrainedModelWrapper": "vhtool.models.value_head",
    "ValueHead": "vhtool.models.value_head",
    "create_reference_model": "vhtool.models.reference",
    "load_policy_and_reference": "vhtool.models.reference",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vhtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
