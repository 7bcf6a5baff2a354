"""The value-head part of an inspection: which convention was found and whether the head is usable."""

from __future__ import annotations

from vhtool.checkpoint.conventions import detect_framework, find_heads
from vhtool.checkpoint.inspect.model import ValueHeadReport
from vhtool.checkpoint.layout import Checkpoint
from vhtool.checkpoint.safetensors_io import FLOAT_DTYPES
from vhtool.errors import InputError


def value_head_report(ckpt: Checkpoint, hidden: int | None) -> ValueHeadReport:
    """The value heads found in ``ckpt``, with problems (shape, dtype) against the hidden size ``hidden``."""
    heads = find_heads(ckpt)
    problems: list[str] = []
    notes: list[str] = []
    # the convention as a whole (docs/conventions.md): which framework, where it reads the reward, normalisation
    try:
        fw = detect_framework(set(ckpt.tensors), ckpt.config)
    except InputError as exc:
        fw = None
        problems.append(str(exc))
    if fw is not None:
        notes.append(f"convention {fw.describe()}")
    docs = tuple(
        {
            "convention": h.convention,
            "description": h.description,
            "file": h.file,
            "weight": h.weight,
            "shape": list(h.shape),
            "dtype": h.dtype,
            "bias": h.bias,
            "bias_shape": list(h.bias_shape) if h.bias_shape is not None else None,
            "bias_dtype": h.bias_dtype,
        }
        for h in heads
    )
    if heads:
        h = heads[0]
        if hidden is None:
            problems.append("config.json has no usable hidden size, so the head's width cannot be checked")
        elif h.shape != (1, hidden):
            problems.append(
                f"{h.weight} is {list(h.shape)}, expected [1, {hidden}] (one output, hidden size {hidden})"
            )
        if h.dtype not in FLOAT_DTYPES:
            problems.append(
                f"{h.weight} has dtype {h.dtype}; a value head must be one of {', '.join(sorted(FLOAT_DTYPES))}"
            )
        if h.bias is None:
            notes.append(f"{h.weight} has no bias tensor")
        else:
            if h.bias_shape != (1,):
                problems.append(f"{h.bias} is {list(h.bias_shape or ())}, expected [1]")
            if h.bias_dtype not in FLOAT_DTYPES:
                problems.append(
                    f"{h.bias} has dtype {h.bias_dtype}; expected one of {', '.join(sorted(FLOAT_DTYPES))}"
                )
        if len(heads) > 1:
            notes.append("several head conventions are present: " + ", ".join(x.convention for x in heads))
    return ValueHeadReport(heads=docs, hidden_size=hidden, problems=tuple(problems), notes=tuple(notes))
