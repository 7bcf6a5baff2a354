"""File and folder names every room agrees on: the manifest and the reward adapter's PEFT files. No imports."""

from __future__ import annotations

#: What vhtool knows about a checkpoint (see :mod:`vhtool.checkpoint.manifest`).
MANIFEST_FILE = "vhtool.json"

#: The PEFT adapter config, in the adapter folder.
ADAPTER_CONFIG = "adapter_config.json"
#: The PEFT adapter weights as safetensors (what vhtool stores).
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: The PEFT adapter weights as a pickle (read only with ``--allow-pickle``, never stored).
ADAPTER_PICKLE = "adapter_model.bin"
#: The reward adapter's default PEFT name, which is also the subfolder it is stored in.
DEFAULT_ADAPTER_NAME = "reward_model_adapter"
DEFAULT_ADAPTER_SUBFOLDER = DEFAULT_ADAPTER_NAME

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_PICKLE",
    "ADAPTER_WEIGHTS",
    "DEFAULT_ADAPTER_NAME",
    "DEFAULT_ADAPTER_SUBFOLDER",
    "MANIFEST_FILE",
]
