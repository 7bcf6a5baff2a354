"""Names every room agrees on, re-exported from :mod:`vhtool.checkpoint.catalogue` (the one catalogue of files)."""

from __future__ import annotations

from vhtool.checkpoint.catalogue import (
    ADAPTER_CONFIG,
    ADAPTER_PICKLE,
    ADAPTER_WEIGHTS,
    DEFAULT_ADAPTER_NAME,
    DEFAULT_ADAPTER_SUBFOLDER,
    MANIFEST_FILE,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_PICKLE",
    "ADAPTER_WEIGHTS",
    "DEFAULT_ADAPTER_NAME",
    "DEFAULT_ADAPTER_SUBFOLDER",
    "MANIFEST_FILE",
]
