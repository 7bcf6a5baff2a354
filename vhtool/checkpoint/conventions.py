"""Where a checkpoint keeps its value (or reward) head: the naming conventions of the field, by header."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vhtool.checkpoint.layout import SIDECAR_FILE, Checkpoint
from vhtool.checkpoint.manifest import Manifest
from vhtool.choices import CONVENTIONS as CONVENTIONS
from vhtool.errors import InputError

VHEAD_WEIGHT = "v_head.summary.weight"
VHEAD_BIAS = "v_head.summary.bias"

#: convention name -> (weight key, bias key or None), in order of preference.
KNOWN_HEADS: dict[str, tuple[str, str | None]] = {
    "vhtool": (VHEAD_WEIGHT, VHEAD_BIAS),
    "score": ("score.weight", "score.bias"),
    "value_head": ("value_head.weight", "value_head.bias"),
    "classifier": ("classifier.weight", "classifier.bias"),
}

DESCRIPTIONS = {
    "vhtool": "vhtool/TRL inline (v_head.summary.* among the model's tensors)",
    "sidecar": "sidecar (v_head.summary.* in value_head.safetensors)",
    "score": "sequence-classification head (score.weight)",
    "value_head": "critic head (value_head.weight, OpenRLHF style)",
    "classifier": "token-classification head (classifier.weight, GPT-2 family)",
}

#: Tensor-name prefixes of a causal LM's output projection (``embed_out`` is GPT-NeoX's).
LM_HEAD_PREFIXES = ("lm_head.", "embed_out.")


@dataclass(frozen=True)
class HeadFound:
    """A value/reward head found in a checkpoint's headers."""

    convention: str
    file: str
    weight: str
    bias: str | None
    shape: tuple[int, ...]
    dtype: str
    bias_shape: tuple[int, ...] | None
    bias_dtype: str | None

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.convention]


def find_heads(ckpt: Checkpoint) -> list[HeadFound]:
    """Every known head convention present in ``ckpt`` (usually zero or one)."""
    found: list[HeadFound] = []
    for conv, (wkey, bkey) in KNOWN_HEADS.items():
        loc = ckpt.tensors.get(wkey)
        if loc is None:
            continue
        b = ckpt.tensors.get(bkey) if bkey else None
        found.append(
            HeadFound(
                convention=conv,
                file=loc.file,
                weight=wkey,
                bias=bkey if b else None,
                shape=loc.info.shape,
                dtype=loc.info.dtype,
                bias_shape=b.info.shape if b else None,
                bias_dtype=b.info.dtype if b else None,
            )
        )
    if ckpt.sidecar is not None and VHEAD_WEIGHT in ckpt.sidecar.tensors:
        w = ckpt.sidecar.tensors[VHEAD_WEIGHT]
        sb = ckpt.sidecar.tensors.get(VHEAD_BIAS)
        found.append(
            HeadFound(
                convention="sidecar",
                file=SIDECAR_FILE,
                weight=VHEAD_WEIGHT,
                bias=VHEAD_BIAS if sb else None,
                shape=w.shape,
                dtype=w.dtype,
                bias_shape=sb.shape if sb else None,
                bias_dtype=sb.dtype if sb else None,
            )
        )
    return found


@dataclass(frozen=True)
class Detected:
    """The convention a checkpoint follows as a whole, its head, and what it has for an LM head."""

    convention: str
    head: HeadFound
    lm_head: tuple[str, ...]
    tied: bool

    @property
    def has_lm_head(self) -> bool:
        """True when the checkpoint can produce LM logits: an LM-head tensor, or embeddings tied to one."""
        return bool(self.lm_head) or self.tied


def lm_head_tensors(ckpt: Checkpoint) -> tuple[str, ...]:
    """Names of the LM-head tensors (``lm_head.*``, ``embed_out.*``) among the checkpoint's weights."""
    return tuple(sorted(n for n in ckpt.tensors if n.startswith(LM_HEAD_PREFIXES)))


def ties_embeddings(config: dict[str, object]) -> bool:
    """``tie_word_embeddings`` as transformers reads it (absent means True, PretrainedConfig's default)."""
    for cfg in (config, config.get("text_config")):
        if isinstance(cfg, dict) and "tie_word_embeddings" in cfg:
            return bool(cfg["tie_word_embeddings"])
    return True


def classifier_kind(config: dict[str, object], head: HeadFound) -> str:
    """``seq-cls`` or ``token-cls`` for a classifier-style head, from ``architectures`` or else the bias.

    HF names say it (``...ForSequenceClassification`` / ``...ForTokenClassification``); OpenRLHF saves
    ``RewardModel`` / ``CriticModel``; otherwise a head with a bias is a token classifier (HF's token
    heads have one, its sequence heads never do).
    """
    archs = config.get("architectures")
    names = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    for a in names:
        if a.endswith("ForTokenClassification") or "Critic" in a:
            return "token-cls"
        if a.endswith("ForSequenceClassification") or "Reward" in a:
            return "seq-cls"
    return "token-cls" if head.bias else "seq-cls"


def tensor_name_summary(ckpt: Checkpoint, *, limit: int = 8) -> str:
    """What a checkpoint holds, for messages: top-level prefixes and any ``*head*``/``*score*`` tensors."""
    prefixes = sorted({n.split(".", 1)[0] + ("." if "." in n else "") for n in ckpt.tensors})
    shown = ", ".join(f"{p}*" if p.endswith(".") else p for p in prefixes[:limit])
    if len(prefixes) > limit:
        shown += f", ... ({len(prefixes)} prefixes)"
    words = ("head", "score", "classifier", "reward", "value")
    headish = sorted(n for n in ckpt.tensors if any(w in n.lower() for w in words))
    if ckpt.sidecar is not None:
        headish += [f"{SIDECAR_FILE}:{n}" for n in sorted(ckpt.sidecar.tensors)]
    found = f"; head-like tensors: {', '.join(headish[:limit])}" if headish else "; no head-like tensors"
    if len(headish) > limit:
        found += f", ... ({len(headish)} in all)"
    return f"tensor prefixes: {shown or '(none)'}{found}"


def detect_convention(ckpt: Checkpoint) -> Detected:
    """The one convention ``ckpt`` follows (see :data:`CONVENTIONS`), read from headers and config only.

    Raises:
        InputError: no known head (the message lists what was found), or more than one.
    """
    heads = find_heads(ckpt)
    if not heads:
        known = ", ".join(w for w, _ in KNOWN_HEADS.values())
        raise InputError(
            f"{ckpt.path}: no value or reward head of a known convention (looked for {known} and "
            f"{SIDECAR_FILE}); found {tensor_name_summary(ckpt)}."
        )
    if len(heads) > 1:
        kinds = "; ".join(f"{h.description} in {h.file}" for h in heads)
        raise InputError(
            f"{ckpt.path}: ambiguous, holds {len(heads)} heads ({kinds}); remove all but one before converting."
        )
    head = heads[0]
    conv = head.convention if head.convention in ("vhtool", "sidecar") else classifier_kind(ckpt.config, head)
    return Detected(convention=conv, head=head, lm_head=lm_head_tensors(ckpt), tied=ties_embeddings(ckpt.config))


# ============================================================================ the one table of conventions
#
# One entry per convention: what its head is called and shaped, where its backbone's tensors live relative to
# transformers' own names, which file it is saved in, which config fields it writes, and how the framework reads
# a reward from it (which token, which normalisation). Detection, inspect-layers, convert, score and serve all
# read this table; adding a convention is one entry here (and its detection rule in :func:`detect_framework`).
# The citations are to each framework's source, checked against it (docs/conventions.md quotes them).

#: How a sequence's reward is read (see :mod:`vhtool.models.scoring.readout`):
#: ``last`` the last token; ``last-non-pad`` the rightmost token whose id is not ``pad_token_id`` (transformers'
#: ``...ForSequenceClassification``); ``eos`` the sequence made to end with the EOS id, read there (OpenRLHF);
#: ``before-eos`` the token before the first EOS/pad id after the first position (DeepSpeed-Chat, trlx's RM).
READOUT_RULES = ("last", "last-non-pad", "eos", "before-eos")


@dataclass(frozen=True)
class Convention:
    """One convention of the table.

    Attributes:
        name: the convention's name (``convert --to/--from``, ``inspect-layers``, ``vhtool.json``).
        framework: who writes it.
        head: the head's tensor names as written (a linear head: weight [+ bias]; trlx: the MLP's four).
        head_shapes: the head's shapes, in words (``h`` the backbone's output width).
        legacy_head: older spellings of the head read (and reported), never written.
        backbone: where the backbone's tensors live: a template over ``{base}``, the family's
            ``base_model_prefix`` (``model``, ``transformer``...), whose remainder is transformers' ``AutoModel`` key.
        legacy_backbone: older spellings of the backbone prefix read (and reported), never written.
        lm_head: ``none`` (no LM head), ``kept`` (the causal LM's head, under the backbone's wrapper prefix),
            ``optional``.
        file_format: ``safetensors`` or ``pickle`` (the plain-tensor ``pytorch_model.bin`` its loader reads).
        config_fields: the ``config.json`` fields the framework writes or reads beyond the family's.
        readout: the rule of :data:`READOUT_RULES` for a reward (``role`` reward).
        critic_readout: the rule for a critic's per-sequence value (its per-token values are all read).
        normalization: ``none``, or ``config`` (``(r - mean) / std`` when ``normalize_reward`` is true).
        role: the role a checkpoint of this convention has by default (``reward`` or ``critic``).
        writable: ``convert --to`` writes it.
        source: where the framework's code says so.
        head_width: what the framework sizes the head's input by: ``output``, the backbone's output width
            (OPT's ``word_embed_proj_dim``, else ``hidden_size``), or ``hidden_size``, the config's
            ``hidden_size``/``n_embd``/``d_model`` whatever the backbone outputs (OpenRLHF, trlx: on OPT with a
            projection their own models cannot be built, so vhtool refuses to write them).
    """

    name: str
    framework: str
    head: tuple[str, ...]
    head_shapes: str
    legacy_head: tuple[str, ...]
    backbone: str
    legacy_backbone: tuple[str, ...]
    lm_head: str
    file_format: str
    config_fields: tuple[str, ...]
    readout: str
    critic_readout: str
    normalization: str
    role: str
    writable: bool
    source: str
    head_width: str = "output"


TABLE: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention(
            "vhtool",
            "vhtool, TRL (AutoModelForCausalLMWithValueHead)",
            (VHEAD_WEIGHT, VHEAD_BIAS),
            "[1, h] + [1]",
            (),
            "{base}.",
            (),
            "kept",
            "safetensors",
            (),
            "last",
            "last",
            "none",
            "critic",
            True,
            "vhtool/models/value_head.py; trl/models/modeling_value_head.py",
        ),
        Convention(
            "sidecar",
            "LLaMA-Factory (value_head.safetensors)",
            (VHEAD_WEIGHT, VHEAD_BIAS),
            "[1, h] + [1]",
            (),
            "{base}.",
            (),
            "kept",
            "safetensors",
            (),
            "last",
            "last",
            "none",
            "critic",
            True,
            "LLaMA-Factory src/llamafactory/train/callbacks.py (fix_valuehead_checkpoint)",
        ),
        Convention(
            "seq-cls",
            "transformers ...ForSequenceClassification",
            ("score.weight",),
            "[1, h], no bias",
            ("value_head.weight", "classifier.weight"),
            "{base}.",
            (),
            "none",
            "safetensors",
            ("num_labels", "pad_token_id"),
            "last-non-pad",
            "last",
            "none",
            "reward",
            True,
            "transformers models/llama/modeling_llama.py (LlamaForSequenceClassification: pooled at the last non-pad)",
        ),
        Convention(
            "token-cls",
            "transformers ...ForTokenClassification",
            ("score.weight", "score.bias"),
            "[1, h] + [1]",
            ("classifier.weight", "classifier.bias"),
            "{base}.",
            (),
            "none",
            "safetensors",
            ("num_labels",),
            "last",
            "last",
            "none",
            "critic",
            True,
            "transformers models/llama/modeling_llama.py (LlamaForTokenClassification)",
        ),
        Convention(
            "openrlhf",
            "OpenRLHF (RewardModel / CriticModel, 0.11.x)",
            ("score.weight",),
            "[1, h], no bias",
            ("value_head.weight",),
            "{base}.",
            (),
            "none",
            "safetensors",
            ("value_head_prefix", "normalize_reward", "mean", "std", "use_cache"),
            "eos",
            "last",
            "config",
            "reward",
            True,
            "openrlhf/models/model.py:177-243 (reward), 245-330 (critic), 73-74 (value_head_prefix); "
            "openrlhf/datasets/reward_dataset.py:142-169 (EOS appended); openrlhf/trainer/rm_trainer.py:296 (mean)",
            "hidden_size",  # nn.Linear(config.hidden_size, 1, bias=False), model.py:184
        ),
        Convention(
            "deepspeed-chat",
            "DeepSpeed-Chat (dschat RewardModel, critic)",
            ("v_head.weight",),
            "[1, n], no bias; n = word_embed_proj_dim (OPT) else hidden_size",
            (),
            "rwtransformer.",
            ("rwtranrsformer.",),
            "none",
            "pickle",
            ("end_token_id", "pad_token_id"),
            "before-eos",
            "last",
            "none",
            "reward",
            True,
            "dschat/utils/model/reward_model.py:18-32 (v_head, rwtransformer), 148-167 (forward_value readout); "
            "dschat/utils/model/model_utils.py:107-112 (end_token_id, pad = eos, vocab to a multiple of 8)",
        ),
        Convention(
            "trlx",
            "trlx (AutoModelForCausalLMWithValueHead / Hydra)",
            ("v_head.0.weight", "v_head.0.bias", "v_head.2.weight", "v_head.2.bias"),
            "MLP: [2h, h] + [2h], ReLU, [1, 2h] + [1]",
            (),
            "base_model.{base}.",
            (),
            "kept",
            "pickle",
            (),
            "last",
            "last",
            "none",
            "critic",
            True,
            "trlx/models/modeling_ppo.py (make_value_branch, AutoModelForCausalLMWithValueHead.state_dict, "
            "AutoModelForCausalLMWithHydraValueHead: frozen_head.*); trlx/utils/modeling.py (make_head)",
            "hidden_size",  # make_head(hf_get_hidden_size(config)): hidden_size, n_embd or d_model
        ),
        Convention(
            "trlx-rm",
            "trlx examples/summarize_rlhf GPTRewardModel (bare state dict)",
            ("v_head.weight",),
            "[1, h], no bias",
            (),
            "transformer.",
            (),
            "none",
            "pickle",
            (),
            "before-eos",
            "last",
            "none",
            "reward",
            False,
            "trlx examples/summarize_rlhf/reward_model/reward_model.py:6-17 (transformer, v_head), 58-66 (readout)",
        ),
        Convention(
            "verl",
            "verl critic / reward model (AutoModelForTokenClassification, merged FSDP)",
            ("score.weight", "score.bias"),
            "[1, h] + [1]",
            (),
            "{base}.",
            (),
            "none",
            "safetensors",
            (),
            "last",
            "last",
            "none",
            "critic",
            False,
            "verl/workers/fsdp_workers.py (CriticWorker: AutoModelForTokenClassification, num_labels=1); "
            "verl/workers/critic/dp_critic.py (values[:, -response_length-1:-1])",
        ),
    )
}

#: trlx's hydra reference branch (``AutoModelForCausalLMWithHydraValueHead.state_dict``, modeling_ppo.py): a
#: frozen copy of the reference's top ``num_layers_unfrozen`` blocks, final norm and LM head, saved beside the model.
HYDRA_PREFIX = "frozen_head."


def hydra_summary(names: Iterable[str]) -> str:
    """``frozen_head.* (N tensors: K decoder blocks, final norm, LM head)`` for messages, from the tensor names."""
    names = [n.removeprefix(HYDRA_PREFIX) for n in names]
    blocks = {n.split(".")[1] for n in names if n.startswith("decoder_blocks.") and n.count(".") >= 2}
    parts = [f"{len(blocks)} decoder block{'s' if len(blocks) != 1 else ''}"] if blocks else []
    tails = (("final_norm.", "final norm"), ("lm_head.", "LM head"))
    parts += [w for p, w in tails if any(n.startswith(p) for n in names)]
    return f"{HYDRA_PREFIX}* ({len(names)} tensors" + (f": {', '.join(parts)})" if parts else ")")


#: The head names of every convention, for grouping tensors (inspect-layers) and messages.
TABLE_HEAD_NAMES = frozenset(n for c in TABLE.values() for n in (*c.head, *c.legacy_head))


def readout_for(convention: str, role: str) -> str:
    """The readout rule of ``convention`` for a checkpoint of ``role`` (``reward`` or ``critic``)."""
    c = TABLE[convention]
    return c.readout if role == "reward" else c.critic_readout


def carried(manifest: Manifest | None, role: str | None) -> tuple[str | None, str | None]:
    """``(role, readout)`` a converted checkpoint's ``vhtool.json`` records, carried through the next conversion.

    The recorded readout is the first source's rule (what ``score`` applies), so a chain of conversions keeps giving
    that framework's number; it is carried unless ``role`` (``--role``) asks for another role than the recorded one.
    """
    if manifest is None:
        return None, None
    rec_role = manifest.role if manifest.role in ("reward", "critic") else None
    conv = manifest.conversion
    rule = conv.readout if conv is not None else None
    if role is not None and role != rec_role:
        return None, None
    return rec_role, rule if rule in READOUT_RULES else None


def readout_change_note(*, to: str, role: str, source: str, rule: str) -> str | None:
    """The one line ``convert`` says when ``to``'s framework reads a ``role`` at another token than ``rule``."""
    dst = readout_for(to, role) if to in TABLE else rule
    if dst == rule:
        return None
    return (
        f"{to} reads a {role} at rule {dst}, {source} at {rule}: vhtool.json records {rule} so `vhtool score` "
        f"still gives {source}'s number; {TABLE[to].framework} itself will read {dst}"
    )


@dataclass(frozen=True)
class FrameworkDetected:
    """A checkpoint recognised as one of the frameworks' conventions, from its tensor names and config.

    Attributes:
        convention: the :data:`TABLE` entry.
        head: the head's tensor names as found (legacy spellings included).
        backbone_prefix: the prefix in front of transformers' ``AutoModel`` keys in this checkpoint.
        base: the family's ``base_model_prefix`` as found (``model``, ``transformer``...), or ``""``.
        role: ``reward`` or ``critic`` (from the config where it says, else the convention's default).
        readout: the readout rule for that role.
        normalization: ``{"normalize_reward", "mean", "std"}`` when the config asks for normalisation, else empty.
        legacy: the legacy spellings found, for reports.
        hydra: trlx's ``frozen_head.*`` tensors are present (the reference branch; dropped by conversions).
    """

    convention: Convention
    head: tuple[str, ...]
    backbone_prefix: str
    base: str
    role: str
    readout: str
    normalization: dict[str, float | bool]
    legacy: tuple[str, ...]
    hydra: bool = False

    def describe(self) -> str:
        """One line: convention, head, readout and normalisation."""
        norm = (
            f"(r - {self.normalization['mean']:g}) / {self.normalization['std']:g}"
            if self.normalization.get("normalize_reward")
            else "none"
        )
        legacy = f"; legacy spelling {', '.join(self.legacy)}" if self.legacy else ""
        hydra = "; hydra reference branch frozen_head.* (not part of the value model)" if self.hydra else ""
        return (
            f"{self.convention.name} {self.role} ({self.convention.framework}): head {', '.join(self.head)}, "
            f"readout {self.readout}, normalisation {norm}{legacy}{hydra}"
        )


def _archs(config: dict[str, object] | None) -> list[str]:
    archs = (config or {}).get("architectures")
    return [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []


def _first_segment(names: list[str]) -> str:
    """The most common first dotted segment of ``names`` (the backbone's attribute, e.g. ``model``)."""
    counts: dict[str, int] = {}
    for n in names:
        if "." in n:
            seg = n.split(".", 1)[0]
            counts[seg] = counts.get(seg, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else ""


def config_normalization(config: dict[str, object] | None) -> dict[str, float | bool]:
    """OpenRLHF's normalisation from ``config.json``: ``normalize_reward`` with its ``mean``/``std``, else ``{}``.

    Its models read ``config.mean``/``config.std`` when present and divide only when ``normalize_reward`` is true
    (openrlhf/models/model.py:191-198, 237-238).
    """
    cfg = config or {}
    if not cfg.get("normalize_reward"):
        return {}
    mean, std = cfg.get("mean", 0.0), cfg.get("std", 1.0)
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)) or isinstance(std, bool) or std == 0:
        raise InputError(f"config.json asks for normalize_reward but its mean/std ({mean!r}, {std!r}) are not usable.")
    return {"normalize_reward": True, "mean": float(mean), "std": float(std)}


def detect_framework(names: list[str] | set[str], config: dict[str, object] | None) -> FrameworkDetected | None:
    """Which framework convention of :data:`TABLE` a checkpoint follows, from tensor names and config alone.

    ``None`` for a checkpoint that is none of them (vhtool, sidecar, plain transformers classifiers: see
    :func:`detect_convention`). Header-level: safetensors headers, or a pickle's keys read with the weights-only
    loader (:mod:`vhtool.checkpoint.pickle_src`).
    """
    keys = set(names)
    archs = _archs(config)
    role_from_arch = "critic" if "CriticModel" in archs else "reward" if "RewardModel" in archs else None
    # trlx: base_model.* and an MLP value head v_head.0/v_head.2 (modeling_ppo.py state_dict)
    if {"v_head.0.weight", "v_head.2.weight"} <= keys and any(k.startswith("base_model.") for k in keys):
        c = TABLE["trlx"]
        inner = [k[len("base_model.") :] for k in keys if k.startswith("base_model.")]
        base = _first_segment([k for k in inner if not k.startswith(LM_HEAD_PREFIXES)])
        return FrameworkDetected(
            c,
            tuple(h for h in c.head if h in keys),
            f"base_model.{base}.",
            base,
            "critic",
            c.critic_readout,
            {},
            (),
            hydra=any(k.startswith(HYDRA_PREFIX) for k in keys),
        )
    if "v_head.weight" in keys:
        for prefix in ("rwtransformer.", "rwtranrsformer."):
            if any(k.startswith(prefix) for k in keys):
                c = TABLE["deepspeed-chat"]
                legacy: tuple[str, ...] = (prefix,) if prefix in c.legacy_backbone else ()
                return FrameworkDetected(c, ("v_head.weight",), prefix, "", "reward", c.readout, {}, legacy)
        if any(k.startswith("transformer.") for k in keys):
            c = TABLE["trlx-rm"]
            return FrameworkDetected(c, ("v_head.weight",), "transformer.", "transformer", "reward", c.readout, {}, ())
    cfg = config or {}
    prefix_cfg = cfg.get("value_head_prefix")
    transformers_class = any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in archs)
    if role_from_arch is not None or (
        not transformers_class and (isinstance(prefix_cfg, str) or "normalize_reward" in cfg)
    ):
        c = TABLE["openrlhf"]
        head = next(
            (
                f"{p}.weight"
                for p in ((prefix_cfg,) if isinstance(prefix_cfg, str) else ("score", "value_head"))
                if f"{p}.weight" in keys
            ),
            None,
        )
        if head is not None:
            legacy = (head,) if head in c.legacy_head and not isinstance(prefix_cfg, str) else ()
            base = _first_segment([k for k in keys if k != head])
            role = role_from_arch or "reward"
            return FrameworkDetected(
                c, (head,), f"{base}.", base, role, readout_for("openrlhf", role), config_normalization(cfg), legacy
            )
    # verl: a token classifier saved under its causal LM's architectures (merged FSDP critic), no LM head
    if (
        {"score.weight", "score.bias"} <= keys
        and any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        and not any(k.startswith(LM_HEAD_PREFIXES) for k in keys)
    ):
        c = TABLE["verl"]
        base = _first_segment([k for k in keys if not k.startswith("score.")])
        return FrameworkDetected(c, ("score.weight", "score.bias"), f"{base}.", base, "critic", "last", {}, ())
    return None


def declared_hidden_size(config: dict[str, object]) -> int | None:
    """The config's ``hidden_size`` (or ``n_embd``/``d_model``), as trlx's ``hf_get_hidden_size`` finds it."""
    for k in ("hidden_size", "n_embd", "d_model"):
        if isinstance(v := config.get(k), int) and not isinstance(v, bool):
            return v
    return None


def target_width_problem(to: str, width: int, config: dict[str, object]) -> str | None:
    """Why ``convert --to to`` cannot write a head of input ``width`` on this backbone, or ``None``.

    Frameworks that size the head by ``hidden_size`` (:attr:`Convention.head_width`) build a head of the wrong
    width on OPT with a projection (``word_embed_proj_dim`` != ``hidden_size``: the backbone's output is the
    projection's width), so neither their loader nor their forward can take the head.
    """
    conv = TABLE.get(to)
    declared = declared_hidden_size(config)
    if conv is None or conv.head_width != "hidden_size" or declared is None or declared == width:
        return None
    return (
        f"--to {to}: {conv.framework} sizes its head by the config's hidden_size ({declared}), but this "
        f"{config.get('model_type', 'model')} backbone outputs {width} wide (word_embed_proj_dim, its output "
        f"projection), so {to} cannot load or run it; convert --to seq-cls, deepspeed-chat or vhtool, which size "
        "the head by the output width"
    )


def head_width_problem(width: int, config: dict[str, object]) -> str | None:
    """Why a head of input ``width`` cannot sit on this backbone, or ``None`` when it fits.

    The backbone's output is ``word_embed_proj_dim`` wide for OPT (its output projection; DeepSpeed-Chat sizes
    ``v_head`` by it, reward_model.py:21-26), ``hidden_size`` (or its alias) for every other family.
    """
    allowed = {
        v
        for k in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model")
        if isinstance(v := config.get(k), int) and not isinstance(v, bool)
    }
    if "word_embed_proj_dim" in config and isinstance(config.get("word_embed_proj_dim"), int):
        allowed = {int(config["word_embed_proj_dim"])}  # type: ignore[call-overload]
    if width in allowed:
        return None
    return (
        f"the head's input width {width} matches neither the hidden size nor a known projection "
        f"({', '.join(str(a) for a in sorted(allowed)) or 'none in config.json'})"
    )
