"""The value-head part of an inspection: which convention was found and whether the head is usable."""

from __future__ import annotations

from typing import Any

from vhtool.checkpoint.conventions import (
    HYDRA_PREFIX,
    FrameworkDetected,
    detect_framework,
    find_heads,
    head_width_problem,
    hydra_summary,
)
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
        if fw.hydra:
            notes.append(
                f"trlx's hydra reference branch {hydra_summary(n for n in ckpt.tensors if n.startswith(HYDRA_PREFIX))}"
                ": a frozen copy of the reference's top layers, not part of the value model; "
                "`convert --to trlx` keeps it, other targets drop it"
            )
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
    if not heads and fw is not None and fw.head[0] in ckpt.tensors:
        docs, fw_problems = _framework_head(ckpt, fw)
        problems += fw_problems
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


def _framework_head(ckpt: Checkpoint, fw: FrameworkDetected) -> tuple[tuple[dict[str, Any], ...], list[str]]:
    """The head of a framework convention that :func:`find_heads` does not know (DeepSpeed-Chat's and trlx's
    ``v_head.*``), checked against its own shape rules: one output, an input width the backbone has."""
    problems: list[str] = []
    first = ckpt.tensors[fw.head[0]].info
    last_name = fw.head[-2] if len(fw.head) == 4 else fw.head[0]  # trlx: v_head.2.weight is the output layer
    last = ckpt.tensors[last_name].info if last_name in ckpt.tensors else first
    bias = fw.head[-1] if len(fw.head) > 1 and fw.head[-1].endswith(".bias") else None
    bias_info = ckpt.tensors[bias].info if bias is not None and bias in ckpt.tensors else None
    if len(last.shape) != 2 or last.shape[0] != 1:
        problems.append(f"{last_name} is {list(last.shape)}, expected one output row")
    width = first.shape[-1] if first.shape else 0
    if ckpt.config:
        problem = head_width_problem(int(width), ckpt.config)
        if problem is not None:
            problems.append(problem)
    for name in fw.head:
        if name in ckpt.tensors and ckpt.tensors[name].info.dtype not in FLOAT_DTYPES:
            problems.append(f"{name} has dtype {ckpt.tensors[name].info.dtype}; expected a float dtype")
    doc = {
        "convention": fw.convention.name,
        "description": f"{fw.convention.framework} head ({fw.convention.head_shapes})",
        "file": ckpt.tensors[fw.head[0]].file,
        "weight": fw.head[0],
        "shape": list(first.shape),
        "dtype": first.dtype,
        "bias": bias,
        "bias_shape": list(bias_info.shape) if bias_info is not None else None,
        "bias_dtype": bias_info.dtype if bias_info is not None else None,
    }
    return (doc,), problems
