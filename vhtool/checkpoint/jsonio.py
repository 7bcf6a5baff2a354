"""Reading the small JSON files of a checkpoint (config, index, manifest, adapter config) with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vhtool.errors import CheckpointError


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """Reads a JSON file that must hold an object.

    Args:
        path: the file.
        what: how to name it in messages (``config.json``, ``the safetensors index``...).

    Returns:
        The parsed object.

    Raises:
        CheckpointError: the file cannot be read, is not JSON, is nested too deeply, or is not an object.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({exc}).") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{path}: {what} is nested too deeply to be valid.") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object, got {type(doc).__name__}.")
    return doc


__all__ = ["read_json_object"]
