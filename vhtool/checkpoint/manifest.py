"""``vhtool.json``: what vhtool knows about a checkpoint. No timestamps, so outputs are reproducible."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vhtool._version import __version__
from vhtool.checkpoint.copyio import FileRecord
from vhtool.checkpoint.layout import MANIFEST_FILE

FORMAT = "vhtool-checkpoint"
FORMAT_VERSION = 1


def new_manifest(*, role: str, architecture: str, **sections: Any) -> dict[str, Any]:
    """A manifest skeleton; ``sections`` are added as top-level keys (``source``, ``value_head``...)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vhtool_version": __version__,
        "role": role,
        "architecture": architecture,
    }
    doc.update(sections)
    return doc


def files_section(records: list[FileRecord]) -> dict[str, dict[str, Any]]:
    return {r.name: {"size": r.size, "sha256": r.sha256, "how": r.how} for r in sorted(records, key=lambda r: r.name)}


def write_manifest(directory: Path, doc: dict[str, Any]) -> None:
    (directory / MANIFEST_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
