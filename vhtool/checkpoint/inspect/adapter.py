"""The reward adapter's report: where ``vhtool.json`` says it is, and whether its config and tensors fit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vhtool.checkpoint.inspect.group import LORA_RE, SCORE_RE
from vhtool.checkpoint.inspect.model import AdapterReport
from vhtool.checkpoint.layout import hidden_size
from vhtool.checkpoint.manifest import Manifest
from vhtool.checkpoint.names import DEFAULT_ADAPTER_SUBFOLDER
from vhtool.checkpoint.safetensors_io import FLOAT_DTYPES, TensorInfo
from vhtool.errors import InputError


def adapter_record(manifest: Manifest | None, has_default: bool) -> tuple[str, str, bool, list[str]] | None:
    """(name, subfolder, recorded, problems) of the reward adapter, or None when there is none.

    Args:
        manifest: the checkpoint's manifest (its types already checked).
        has_default: whether the default adapter subfolder holds an adapter config.
    """
    rec = manifest.reward_adapter if manifest is not None else None
    if rec is None:
        if has_default:
            return DEFAULT_ADAPTER_SUBFOLDER, DEFAULT_ADAPTER_SUBFOLDER, False, []
        return None
    name = rec.name or rec.subfolder or DEFAULT_ADAPTER_SUBFOLDER
    sub = rec.subfolder or name
    return name, sub.strip("/"), True, []


def adapter_report(
    name: str,
    sub: str,
    recorded: bool,
    cfg: Mapping[str, Any] | None,
    infos: Mapping[str, TensorInfo],
    problems: list[str],
    model_config: Mapping[str, Any],
) -> AdapterReport:
    problems = list(problems)
    cfg = cfg or {}
    peft_type = cfg.get("peft_type")
    task_type = cfg.get("task_type")
    if cfg and peft_type != "LORA":
        problems.append(f"peft_type is {peft_type!r}, not 'LORA'")
    if cfg and task_type != "SEQ_CLS":
        problems.append(f"task_type is {task_type!r}; a reward adapter is trained for SEQ_CLS")
    lora = [n for n in infos if LORA_RE.search(n)]
    scores = sorted(n for n in infos if SCORE_RE.search(n) and not LORA_RE.search(n) and n.endswith("weight"))
    score: dict[str, Any] | None = None
    if infos and not lora:
        problems.append("adapter weights hold no LoRA tensors")
    if infos:
        if not scores:
            problems.append("adapter carries no score head (score.weight); a reward adapter needs one")
        else:
            ti = infos[scores[0]]
            score = {"name": ti.name, "shape": list(ti.shape), "dtype": ti.dtype}
            try:
                hidden: int | None = hidden_size(dict(model_config))
            except InputError:
                hidden = None
            if hidden is not None and ti.shape != (1, hidden):
                problems.append(f"score head {ti.name} is {list(ti.shape)}, expected [1, {hidden}]")
            if ti.dtype not in FLOAT_DTYPES:
                problems.append(f"score head {ti.name} has dtype {ti.dtype}, not one of {sorted(FLOAT_DTYPES)}")
    tm = cfg.get("target_modules")
    target: tuple[str, ...] | str | None
    if isinstance(tm, list):
        target = tuple(str(x) for x in tm)
    elif isinstance(tm, str):
        target = tm
    else:
        target = None
    r = cfg.get("r")
    alpha = cfg.get("lora_alpha")
    return AdapterReport(
        name=name,
        subfolder=sub,
        recorded=recorded,
        peft_type=peft_type if isinstance(peft_type, str) else None,
        task_type=task_type if isinstance(task_type, str) else None,
        r=r if isinstance(r, int) else None,
        lora_alpha=alpha if isinstance(alpha, (int, float)) else None,
        target_modules=target,
        lora_tensors=len(lora),
        score=score,
        problems=tuple(problems),
    )
