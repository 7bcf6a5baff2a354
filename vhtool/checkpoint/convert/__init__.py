"""``vhtool convert``: move a value/reward head between the field's conventions, renaming at the header level.

The conventions (see :data:`vhtool.checkpoint.conventions.CONVENTIONS`):

* ``vhtool`` (TRL inline): ``v_head.summary.weight [1,h]`` + ``v_head.summary.bias [1]`` among a causal
  LM's tensors;
* ``sidecar`` (LLaMA-Factory): the same two tensors in ``value_head.safetensors`` next to a plain causal LM;
* ``seq-cls`` (HF ``...ForSequenceClassification`` with ``num_labels=1``, OpenRLHF reward models): the
  backbone without an LM head plus ``score.weight [1,h]`` (or ``value_head.weight``), no bias;
* ``token-cls`` (HF ``...ForTokenClassification``, verl critics): the same with a bias (``score.*`` for
  Llama-style families, ``classifier.*`` for GPT-2-style ones; OpenRLHF's ``value_head`` has none).

Backbone tensors keep their names (transformers uses the same base-model prefix in the causal and the
classification classes); only the head is renamed, the LM head dropped or required, and ``config.json``
adjusted. Tensor bytes move in the kernel, shard by shard; only the bias (one number) is read by Python.

Losses: dropping an LM head that is not tied to the embeddings is inherent to a classifier target and
only warned about (and recorded in ``vhtool.json``); dropping a *non-zero* bias changes every value the
head computes, so it is refused unless ``allow_lossy`` (and then recorded). A target that needs an LM
head the source does not have (untied embeddings) is refused.
"""

from __future__ import annotations

from vhtool.checkpoint.convert.naming import (
    CLASSIFIER_TARGETS,
    HEAD_NAMES,
    NORM_KEYS,
    TARGETS,
    default_head_name,
    target_architecture,
    target_config,
    target_head_keys,
)
from vhtool.checkpoint.convert.op import ConvertResult, convert_checkpoint

__all__ = [
    "CLASSIFIER_TARGETS",
    "HEAD_NAMES",
    "NORM_KEYS",
    "TARGETS",
    "ConvertResult",
    "convert_checkpoint",
    "default_head_name",
    "target_architecture",
    "target_config",
    "target_head_keys",
]
