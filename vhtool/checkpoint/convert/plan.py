"""Planning a conversion from headers only: the head as the target holds it, what is dropped, lost or noted.

Nothing is written here; :func:`plan_conversion` raises before any output exists when the conversion is
refused (a non-scalar head, a non-zero bias the target cannot hold, a missing LM head).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.conventions import Detected
from vhtool.checkpoint.convert.naming import (
    CLASSIFIER_TARGETS,
    NORM_KEYS,
    default_head_name,
    target_config,
    target_head_keys,
    transformers_has,
)
from vhtool.checkpoint.convert.weights import HeadSource, head_source, source_header, source_tensor
from vhtool.checkpoint.copyio import hash_file
from vhtool.checkpoint.layout import Checkpoint, hidden_size
from vhtool.checkpoint.safetensors_io import DTYPE_SIZES, FLOAT_DTYPES, TensorInfo, read_tensor_values
from vhtool.checkpoint.writer import PlannedTensor
from vhtool.errors import CheckpointError, InputError


@dataclass(frozen=True)
class Plan:
    """What a conversion will write, decided from the source's headers and config.

    Attributes:
        det: the source's detected convention and head.
        hs: where the source head's tensors live.
        hidden: the hidden size.
        head_out: the head's tensors as the target names them, with their bytes' source.
        head_info: the source head weight's header entry.
        drop: source tensors left out (the LM head of a classifier target).
        src_head_names: the source head's tensors among the weight files (empty for a sidecar).
        config: the target's ``config.json``.
        normalization: reward normalisation statistics carried over.
        lost: what the conversion loses, recorded in ``vhtool.json``.
        dropped_untrained: what was dropped without loss (see :func:`untrained_random_head`).
    """

    det: Detected
    hs: HeadSource
    hidden: int
    head_out: list[PlannedTensor]
    head_info: TensorInfo
    drop: set[str]
    src_head_names: set[str]
    config: dict[str, Any]
    normalization: dict[str, Any]
    lost: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Dropped without loss: the random bias of a head vhtool initialised and nobody trained since.
    dropped_untrained: list[str] = field(default_factory=list)


def plan_conversion(
    ckpt: Checkpoint,
    det: Detected,
    *,
    to: str,
    head_name: str | None,
    pad_token_id: int | None,
    allow_lossy: bool,
    out: Path | None = None,
) -> Plan:
    """Decides how ``ckpt`` (detected as ``det``) is written in the ``to`` convention.

    Raises:
        CheckpointError: the head is not scalar (``[1, hidden]`` + ``[1]`` bias, a float dtype).
        InputError: ``ckpt`` is already in the ``to`` convention, a non-zero bias the target cannot hold
            (without ``allow_lossy``), or a causal target without an LM head.
    """
    head = det.head
    hidden = _check_scalar_head(ckpt, det)
    normalization: dict[str, Any] = dict(ckpt.manifest.normalization or {}) if ckpt.manifest is not None else {}
    normalization.update({k: ckpt.config[k] for k in NORM_KEYS if k in ckpt.config})

    name = head_name or (default_head_name(ckpt.config, to, normalization) if to in CLASSIFIER_TARGETS else "v_head")
    tw, tb = target_head_keys(to, name)
    if det.convention == to and (to not in CLASSIFIER_TARGETS or tw == head.weight):
        raise InputError(f"{ckpt.path}: is already in the {to} convention ({head.description}); nothing to convert.")

    warnings: list[str] = []
    notes: list[str] = []
    lost: list[str] = []
    dropped_untrained: list[str] = []
    hs = head_source(ckpt, det)

    def retry(*, to: str, extra: str = "") -> str:
        """The convert command line for ``to``, with this call's options (for messages)."""
        cmd = f"vhtool convert {shlex.quote(str(ckpt.path))} --to {to}"
        if head_name is not None and to in CLASSIFIER_TARGETS:
            cmd += f" --head-name {head_name}"
        if pad_token_id is not None:
            cmd += f" --pad-token-id {pad_token_id}"
        return cmd + f" -o {shlex.quote(str(out or f'{ckpt.path}-{to}'))}{extra}"

    # The head as the target holds it: the weight renamed, the bias renamed, zero-filled, or dropped.
    w_info, w_range = source_tensor(ckpt, hs, head.weight)
    head_out = [PlannedTensor(tw, w_info.dtype, w_info.shape, w_range)]
    if tb is not None:
        if head.bias is not None:
            b_info, b_range = source_tensor(ckpt, hs, head.bias)
            head_out.append(PlannedTensor(tb, b_info.dtype, b_info.shape, b_range))
        else:
            head_out.append(PlannedTensor(tb, w_info.dtype, (1,), b"\0" * DTYPE_SIZES[w_info.dtype]))
            notes.append(f"the source head has no bias; wrote a zero {tb}")
    elif head.bias is not None:
        value = float(read_tensor_values(*source_header(ckpt, hs, head.bias)).reshape(-1)[0])
        if value != 0.0:
            untrained, why = untrained_random_head(ckpt, hs)
            if untrained:
                dropped_untrained.append(f"{head.bias} (value {value!r})")
                notes.append(
                    f"the untrained random bias {head.bias} = {value:g} was dropped ({why}): a critic learns its "
                    "offset in training; recorded under conversion.dropped_untrained in vhtool.json"
                )
            elif not allow_lossy:
                raise InputError(
                    f"{ckpt.path}: {head.bias} is {value:g}, but a {to} head named {name!r} has no bias, so every "
                    f"value would shift ({why}); `{retry(to='token-cls')}` keeps it (a token classifier has a bias), "
                    f"`{retry(to=to, extra=' --allow-lossy')}` drops it (recorded in vhtool.json)."
                )
            else:
                lost.append(f"{head.bias} (value {value!r})")
                warnings.append(f"dropped the non-zero bias {head.bias} = {value:g}: values shift by that constant")
        else:
            notes.append(f"dropped {head.bias} (zero)")

    drop = _drop_lm_head(ckpt, det, to=to, lost=lost, warnings=warnings, notes=notes)
    reward = ckpt.manifest.reward_adapter if ckpt.manifest is not None else None
    if reward is not None:
        lost.append(f"reward adapter {reward.subfolder or reward.name or '(subfolder)'}")
        warnings.append("the source's reward adapter is not carried over; attach it again with attach-reward-adapter")

    config = target_config(ckpt.config, to=to, head_name=name, normalization=normalization, pad_token_id=pad_token_id)
    if to == "seq-cls" and config.get("pad_token_id") is None:
        warnings.append(
            "config.json has no pad_token_id: transformers' sequence classifiers then score one sequence at a time; "
            "pass --pad-token-id to set it"
        )
    if to in CLASSIFIER_TARGETS and "architectures" not in config:
        warnings.append("could not name the target class for this family; config.json has no `architectures`")
    elif to in CLASSIFIER_TARGETS and not transformers_has(config["architectures"][0]):
        other = "seq-cls" if to == "token-cls" else "token-cls"
        raise InputError(
            f"--to {to}: transformers has no {config['architectures'][0]}, so nothing could load the result; "
            f"convert --to {other} or vhtool instead."
        )

    return Plan(
        det=det,
        hs=hs,
        hidden=hidden,
        head_out=head_out,
        head_info=w_info,
        drop=drop,
        src_head_names={head.weight, *([head.bias] if head.bias else [])} if hs.inline else set(),
        config=config,
        normalization=normalization,
        lost=lost,
        warnings=warnings,
        notes=notes,
        dropped_untrained=dropped_untrained,
    )


def untrained_random_head(ckpt: Checkpoint, hs: HeadSource) -> tuple[bool, str]:
    """Whether the head is still the ``random`` init ``vhtool init`` wrote, and why (or why not), for messages.

    The rule: ``vhtool.json`` records ``value_head.init_strategy: random`` and a sha256 for the file holding the
    head, and that file's content still hashes to it. Every vhtool command records the sha256 of what it
    writes and none trains, while ``save_pretrained`` (what a trainer calls) records no hash; so a match means
    the head is the init's random draw, and its bias carries no learned information. Costs one read of the
    head's file (the whole model for a single-file checkpoint), only when a non-zero bias is to be dropped.
    """
    m = ckpt.manifest
    vh = m.value_head if m is not None else None
    if m is None or vh is None or vh.init_strategy != "random":
        return False, "vhtool.json does not record the head as an untrained random init, so it may be trained"
    name = hs.path.name
    entry = m.files.get(name)
    if entry is None or entry.sha256 is None or entry.how == "save_pretrained":
        return False, f"vhtool.json records no sha256 for {name} as written at init, so the head may be trained"
    if hash_file(hs.path) != entry.sha256:
        return False, f"{name} has changed since vhtool recorded it (trained?)"
    return True, f"vhtool.json records a random init and {name} is unchanged since"


def _check_scalar_head(ckpt: Checkpoint, det: Detected) -> int:
    """The hidden size, once the head is known to be scalar: ``[1, hidden]`` (+ ``[1]`` bias) in a float dtype."""
    head = det.head
    hidden = hidden_size(ckpt.config)
    if head.shape != (1, hidden) or head.dtype not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{ckpt.path}: {head.weight} is {head.dtype} {list(head.shape)}; only a scalar head "
            f"(num_labels=1, shape [1, {hidden}], a float dtype) converts."
        )
    if head.bias is not None and (head.bias_shape != (1,) or head.bias_dtype not in FLOAT_DTYPES):
        raise CheckpointError(
            f"{ckpt.path}: {head.bias} is {head.bias_dtype} {list(head.bias_shape or ())}; expected [1]."
        )
    return hidden


def _drop_lm_head(
    ckpt: Checkpoint, det: Detected, *, to: str, lost: list[str], warnings: list[str], notes: list[str]
) -> set[str]:
    """The LM head: a classifier target has none; a causal target needs one (or tied embeddings)."""
    drop: set[str] = set()
    if to in CLASSIFIER_TARGETS:
        drop.update(det.lm_head)
        if det.lm_head and det.tied:
            notes.append(f"dropped {', '.join(det.lm_head)} (tied to the embeddings, nothing lost)")
        if det.lm_head and not det.tied:
            lost.extend(det.lm_head)
            warnings.append(
                f"dropped the LM head ({', '.join(det.lm_head)}), which is not tied to the embeddings: "
                "converting back cannot recover it"
            )
    elif not det.has_lm_head:
        raise InputError(
            f"{ckpt.path}: target {to} needs an LM head the source does not have (no lm_head.weight and "
            "tie_word_embeddings is false); a value-head policy must also generate."
        )
    return drop


__all__ = ["Plan", "plan_conversion"]
