"""Safetensors at the byte level: strict header parsing and header writing, without torch.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON + the data region. We read the
JSON header only, validate it as strictly as the Rust reader does (and with clearer messages), and
never touch the data region unless asked.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.errors import CheckpointError, InputError

#: The largest header we accept. The safetensors Rust reader uses the same 100 MB cap.
MAX_HEADER_BYTES = 100_000_000

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F4": 1,
    "F6_E2M3": 1,
    "F6_E3M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "C64": 8,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

#: Dtypes a value head can be computed in.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header, with offsets relative to the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, validated safetensors header."""

    path: Path
    header_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    file_size: int

    @property
    def data_start(self) -> int:
        """Absolute file offset where the data region begins."""
        return 8 + self.header_size

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_start


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Reads and validates the header of a safetensors file, never its data.

    Raises:
        CheckpointError: the file is truncated, the header is not JSON, offsets overlap or run past
            the end, shapes and sizes disagree, or the declared header length is absurd.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            file_size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{p}: truncated safetensors file ({file_size} bytes; no header length).")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{p}: safetensors header declares {n} bytes, above the {MAX_HEADER_BYTES} byte cap."
                )
            if 8 + n > file_size:
                raise CheckpointError(
                    f"{p}: safetensors header declares {n} bytes but the file has only {file_size - 8} after "
                    "the length prefix (truncated or corrupt file)."
                )
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    return parse_header_bytes(raw, path=p, file_size=file_size)


def parse_header_bytes(raw: bytes, *, path: Path, file_size: int) -> SafetensorsHeader:
    """Validates the JSON header ``raw`` of a file of ``file_size`` bytes (see :func:`read_header`)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc}).") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{path}: safetensors header is nested too deeply to be a header.") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object.")
    data_size = file_size - 8 - len(raw)
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise CheckpointError(f"{path}: __metadata__ must map strings to strings.")
            metadata = dict(entry)
            continue
        tensors[name] = _parse_entry(name, entry, path=path)
    ordered = sorted(tensors.values(), key=lambda t: (t.begin, t.end))
    cursor = 0
    for t in ordered:
        if t.begin != cursor:
            what = "overlap" if t.begin < cursor else "leave a gap"
            raise CheckpointError(f"{path}: tensor {t.name!r} offsets {t.begin}..{t.end} {what} (expected {cursor}).")
        cursor = t.end
    if cursor > data_size:
        raise CheckpointError(
            f"{path}: tensors need {cursor} data bytes but the file holds {data_size} (truncated file)."
        )
    if cursor < data_size:
        raise CheckpointError(f"{path}: {data_size - cursor} trailing bytes after the last tensor (corrupt file).")
    return SafetensorsHeader(path=path, header_size=len(raw), tensors=tensors, metadata=metadata, file_size=file_size)


def _parse_entry(name: str, entry: object, *, path: Path) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: header entry {name!r} is not an object.")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}.")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}.")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}.")
    assert isinstance(dtype, str)
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{path}: tensor {name!r} {dtype}{shape} needs {expected} bytes but its offsets span "
            f"{offsets[1] - offsets[0]}."
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def read_tensor_values(header: SafetensorsHeader, info: TensorInfo) -> Any:
    """A float tensor's values as a float64 numpy array, read from its byte range only (F16, BF16, F32, F64).

    For the few small tensors the file world looks at (value/score heads, a bias); numpy is imported
    here so that header-only paths never pay for it.

    Raises:
        InputError: the dtype is not a float type.
        CheckpointError: the file ends inside the tensor.
    """
    import numpy as np

    if info.dtype not in FLOAT_DTYPES:
        raise InputError(f"{info.name} has dtype {info.dtype}, not a float type.")
    with open(header.path, "rb") as fh:
        fh.seek(header.data_start + info.begin)
        raw = fh.read(info.nbytes)
    if len(raw) != info.nbytes:
        raise CheckpointError(f"{header.path}: {info.name} is cut short (file truncated).")
    if info.dtype == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, dtype={"F16": "<f2", "F32": "<f4", "F64": "<f8"}[info.dtype])
    return values.astype(np.float64).reshape(info.shape)


def build_header(
    tensors: Iterable[tuple[str, str, tuple[int, ...], int]], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Builds a safetensors header for tensors laid out in the given order.

    Args:
        tensors: ``(name, dtype, shape, nbytes)`` in data-region order.
        metadata: the ``__metadata__`` mapping (``format: pt`` is added when missing).

    Returns:
        The full header bytes (length prefix + JSON padded with spaces to a multiple of 8, as the
        reference writer does) and each tensor's ``(begin, end)`` offsets.
    """
    meta = dict(metadata or {})
    meta.setdefault("format", "pt")
    doc: dict[str, object] = {"__metadata__": meta}
    offsets: dict[str, tuple[int, int]] = {}
    cursor = 0
    for name, dtype, shape, nbytes in tensors:
        if name in offsets:
            raise CheckpointError(f"tensor {name!r} appears twice in one file.")
        offsets[name] = (cursor, cursor + nbytes)
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [cursor, cursor + nbytes]}
        cursor += nbytes
    body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body, offsets
