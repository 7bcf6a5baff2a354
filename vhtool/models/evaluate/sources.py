"""Where preference records come from: a JSONL file or stdin, a JSON array or Parquet file, or a Hub data set.

JSONL is read line by line, lazily (the reader of ``vhtool score``); JSON arrays, Parquet files, local data-set
directories and Hub data sets go through the ``datasets`` library. Every record becomes an
:class:`~vhtool.models.scoring.inputs.InputItem` (its 0-based ``index``, 1-based ``line`` or row, the object).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vhtool.errors import InputError
from vhtool.models.scoring.inputs import InputItem, InputSpec, read_inputs

JSONL_SUFFIXES = (".jsonl", ".ndjson")
DATASET_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


@dataclass(frozen=True)
class PairSource:
    """One input of preference records: a local ``path``, a ``stream`` (stdin), or a Hub ``dataset`` id.

    Attributes:
        path: a JSONL / JSON / Parquet file or a data-set directory.
        stream: JSONL on a text stream (read once).
        dataset: a Hub data-set id.
        split: the split of a data set (``datasets``' ``split``); ``None``: the only one.
    """

    path: Path | None = None
    stream: TextIO | None = None
    dataset: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.path, self.stream, self.dataset)) != 1:
            raise InputError("give exactly one input: -i FILE, -i - (stdin), or -i ORG/DATASET (a Hub data set).")

    @property
    def rereadable(self) -> bool:
        return self.stream is None

    @property
    def unit(self) -> str:
        """What a record's number counts in messages: ``line`` (JSONL) or ``record`` (a data set's row)."""
        return "line" if self.kind() == "jsonl" else "record"

    def label(self) -> str:
        if self.path is not None:
            return str(self.path)
        return "stdin" if self.stream is not None else str(self.dataset)

    def kind(self) -> str:
        """``jsonl``, ``json-array``, ``datasets-file`` (Parquet, Arrow, CSV), ``directory`` or ``hub``."""
        if self.stream is not None:
            return "jsonl"
        if self.dataset is not None:
            return "hub"
        assert self.path is not None
        if self.path.is_dir():
            return "directory"
        suffix = self.path.suffix.lower()
        if suffix in DATASET_SUFFIXES:
            return "datasets-file"
        if suffix == ".json" and _first_char(self.path) == "[":
            return "json-array"
        return "jsonl"


def source_from_arg(value: str, *, split: str | None = None) -> PairSource:
    """The source ``-i VALUE`` names: ``-`` is stdin, an existing path a local file, ``org/name`` a Hub data set.

    Raises:
        InputError: no such file, and not a Hub data-set id either.
    """
    if value == "-":
        return PairSource(stream=_stdin(), split=split)
    path = Path(value)
    if path.exists():
        return PairSource(path=path, split=split)
    parts = value.split("/")
    looks_hub = len(parts) == 2 and all(parts) and not value.startswith((".", "/", "~")) and Path(value).suffix == ""
    if looks_hub:
        return PairSource(dataset=value, split=split)
    raise InputError(f"{value}: no such input file (nor a Hub data set id of the form ORG/NAME).")


def _stdin() -> TextIO:
    import sys

    return sys.stdin


def _first_char(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            while True:
                c = fh.read(1)
                if not c or not c.isspace():
                    return c
    except (OSError, UnicodeDecodeError):
        return ""


def read_pairs(source: PairSource) -> Iterator[InputItem]:
    """The records of ``source``, in order (JSONL lazily; data sets from ``datasets``' memory-mapped table).

    Raises:
        InputError: a missing or unreadable file, a data set that cannot be loaded.
        HubUnavailableError: a Hub data set that cannot be fetched (offline, unreachable, no such data set).
    """
    kind = source.kind()
    if kind == "jsonl":
        spec = InputSpec(path=source.path) if source.path is not None else InputSpec(stream=source.stream)
        _, items = read_inputs(spec, "jsonl")
        return items
    table = _load_table(source, kind)
    return (InputItem(i, i + 1, row) for i, row in enumerate(table))


def count_pairs(source: PairSource) -> int | None:
    """How many records a local JSONL file holds (non-blank lines), for a progress total; else ``None``."""
    if source.path is None or source.kind() != "jsonl":
        return None
    try:
        with open(source.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return None


def _load_table(source: PairSource, kind: str) -> Any:
    from vhtool.hub.dataset import load_hub_dataset, need_datasets, pick_split

    datasets = need_datasets()
    if kind == "hub":
        assert source.dataset is not None
        with _quiet_datasets():
            return load_hub_dataset(source.dataset, split=source.split)
    assert source.path is not None
    label = source.label()
    builder = {"json-array": "json", "directory": None}.get(kind, DATASET_SUFFIXES.get(source.path.suffix.lower()))
    try:
        with _quiet_datasets():
            if builder is None:
                loaded = datasets.load_dataset(os.fspath(source.path), split=source.split)
            else:
                loaded = datasets.load_dataset(
                    builder, data_files=os.fspath(source.path), split=source.split or "train"
                )
    except (ValueError, TypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{label}: cannot be read as a data set ({first}).") from None
    except Exception as exc:  # datasets' own errors (DatasetGenerationError, ...), raised for a malformed file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{label}: cannot be read as a data set ({type(exc).__name__}: {first}).") from None
    return pick_split(loaded, label, source.split)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """``datasets``' progress bars and info logs off (they would mix with vhtool's output)."""
    from datasets.utils import logging as ds_logging

    bars = ds_logging.is_progress_bar_enabled()
    level = ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            ds_logging.enable_progress_bar()


__all__ = ["PairSource", "count_pairs", "read_pairs", "source_from_arg"]
