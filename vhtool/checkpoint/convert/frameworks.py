"""The frameworks' conventions in memory: read any entry of :data:`~vhtool.checkpoint.conventions.TABLE` into one
canonical form (transformers' ``AutoModel`` keys + a head + an optional LM head), and write that form out in any
writable entry. ``score`` builds its model from the same form, so what it reads is what ``convert`` writes.

Unlike the header-level converter (:mod:`vhtool.checkpoint.convert.op`), this path renames backbone keys, so it
holds the tensors in memory (the reward models these frameworks write are loaded whole by the frameworks too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhtool.checkpoint.conventions import (
    HYDRA_PREFIX,
    LM_HEAD_PREFIXES,
    TABLE,
    VHEAD_WEIGHT,
    FrameworkDetected,
    carried,
    config_normalization,
    detect_framework,
    head_width_problem,
    hydra_summary,
    readout_change_note,
    readout_for,
    target_width_problem,
)
from vhtool.checkpoint.pickle_src import load_state_dict, read_config
from vhtool.errors import InputError

if TYPE_CHECKING:
    import torch

#: Classifier head names (``conventions.KNOWN_HEADS``): with a bias a token classifier, without a sequence one.
_CLASSIFIER_HEADS = ("score", "classifier", "value_head")

#: How ``AutoModel`` names its token embedding (GPT-2, Llama/OPT/Mistral/Qwen, GPT-NeoX, Bloom).
_TOKEN_EMBEDDINGS = ("wte.weight", "embed_tokens.weight", "embed_in.weight", "word_embeddings.weight")


def token_embedding_key(backbone: Mapping[str, Any]) -> str | None:
    """The backbone's token-embedding tensor (``AutoModel`` keys), or ``None`` when none is recognised."""
    return next((k for k in sorted(backbone) if k.endswith(_TOKEN_EMBEDDINGS)), None)


@dataclass(frozen=True)
class Canon:
    """A checkpoint of any convention, as transformers names things.

    Attributes:
        convention: the source's convention (a :data:`TABLE` name).
        role: ``reward`` or ``critic``.
        config: the source's ``config.json`` (or ``--config-from``'s).
        base: the family's ``base_model_prefix`` (``model``, ``transformer``, ``gpt_neox``...).
        backbone: the backbone's tensors under ``AutoModel``'s keys (no prefix).
        lm_head: the causal LM head's tensors (``lm_head.weight``...), when the source has them.
        head: the head's tensors: ``weight`` ``[1, n]`` (+ ``bias`` ``[1]``), or trlx's MLP ``0.weight``,
            ``0.bias``, ``2.weight``, ``2.bias``.
        mlp: the head is trlx's two-layer MLP.
        readout: the readout rule the source framework applies (see ``conventions.READOUT_RULES``).
        normalization: ``{"normalize_reward": True, "mean", "std"}`` when the source normalises, else empty.
        notes: what was found on the way (legacy spellings), for messages.
        frozen_head: trlx's hydra reference branch (``frozen_head.*``, keys without the prefix): a frozen copy of
            the reference model's top layers, not part of the value model; only ``--to trlx`` has a place for it.
    """

    convention: str
    role: str
    config: dict[str, Any]
    base: str
    backbone: dict[str, torch.Tensor]
    lm_head: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    mlp: bool
    readout: str
    normalization: dict[str, Any]
    notes: tuple[str, ...] = field(default_factory=tuple)
    frozen_head: dict[str, torch.Tensor] = field(default_factory=dict)


def family_base_prefix(config: Mapping[str, Any]) -> str:
    """The family's ``base_model_prefix`` (``transformer`` for GPT-2, ``model`` for Llama) as transformers has it."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(**dict(config)) if "model_type" in config else None
    if cfg is None:
        raise InputError("config.json has no model_type; cannot name the family's backbone.")
    try:
        return str(AutoModel._model_mapping[type(cfg)].base_model_prefix)  # type: ignore[attr-defined]
    except KeyError:
        raise InputError(f"transformers has no base model for model_type {cfg.model_type!r}.") from None


def detect(keys: set[str], config: dict[str, Any] | None) -> tuple[str, FrameworkDetected | None]:
    """The convention name of a state dict's keys (and config), with the framework detail when it is one."""
    fw = detect_framework(keys, config)
    if fw is not None:
        return fw.convention.name, fw
    if VHEAD_WEIGHT in keys:
        return "vhtool", None
    for name in _CLASSIFIER_HEADS:
        if f"{name}.weight" in keys:
            return ("token-cls" if f"{name}.bias" in keys else "seq-cls"), None
    raise InputError(
        "no value or reward head of a known convention (looked for v_head.summary.*, score.*, classifier.*, "
        "value_head.*, v_head.weight under rwtransformer.*/transformer.*, trlx's v_head.0/v_head.2)."
    )


def read_canon(
    src: Path, *, allow_pickle: bool, config_from: Path | None = None, source: str = "auto", role: str | None = None
) -> Canon:
    """Reads ``src`` (any convention of the table) into a :class:`Canon`.

    Args:
        src: a checkpoint directory (trlx: its ``hf_model`` folder).
        allow_pickle: read ``pytorch_model.bin`` (weights-only loader); otherwise such a source is refused.
        config_from: a model folder whose ``config.json`` describes a bare state dict (trlx's summarisation RM).
        source: the convention ``--from`` names, or ``auto``; a name that disagrees with the tensors is refused.
        role: ``reward`` or ``critic`` when the caller knows better than the convention's default.

    Raises:
        InputError: pickle without ``allow_pickle``, no config, no known head, ``--from`` contradicting the
            tensors, a head whose width fits no backbone output, tensors that belong nowhere.
        CheckpointError: unreadable files.
    """
    state, _fmt = load_state_dict(src, allow_pickle=allow_pickle)
    config = read_config(src, config_from=config_from)
    keys = set(state)
    try:
        conv, fw = detect(keys, config)
    except InputError as exc:
        raise InputError(f"{src}: {exc}") from None
    if source not in ("auto", conv):
        raise InputError(f"{src}: --from {source}, but its tensors follow {conv} ({TABLE[conv].framework}).")
    if config is None:
        raise InputError(
            f"{src}: a bare state dict without config.json ({conv}); pass --config-from MODEL, the base model it "
            "was trained from."
        )
    notes: list[str] = []
    from vhtool.checkpoint.layout import read_local_manifest

    manifest = read_local_manifest(src)
    rec_role, rec_rule = carried(manifest, role)
    the_role = role or rec_role or (fw.role if fw is not None else TABLE[conv].role)
    normalization: dict[str, Any] = dict(fw.normalization) if fw is not None else config_normalization(config)
    if not normalization and manifest is not None and manifest.normalization:
        normalization = dict(manifest.normalization)  # a vhtool target keeps OpenRLHF's statistics there only
    head: dict[str, torch.Tensor] = {}
    mlp = False
    if fw is not None:
        if fw.legacy:
            notes.append(f"legacy spelling {', '.join(fw.legacy)} ({fw.convention.framework}) read")
        prefix = fw.backbone_prefix
        if conv == "trlx":
            mlp = True
            head = {h.removeprefix("v_head."): state[h] for h in fw.head}
        else:
            head = {"weight": state[fw.head[0]]}
            if len(fw.head) > 1:
                head["bias"] = state[fw.head[1]]
        head_keys = set(fw.head)
        base = fw.base or family_base_prefix(config)
        lm_prefix = "base_model." if conv == "trlx" else ""
    else:
        stem = "v_head.summary" if conv == "vhtool" else next(n for n in _CLASSIFIER_HEADS if f"{n}.weight" in keys)
        w, b = f"{stem}.weight", f"{stem}.bias"
        head = {"weight": state[w], **({"bias": state[b]} if b in keys else {})}
        head_keys = {w, b}
        base = family_base_prefix(config)
        prefix = f"{base}."
        lm_prefix = ""
    backbone: dict[str, torch.Tensor] = {}
    lm_head: dict[str, torch.Tensor] = {}
    frozen_head: dict[str, torch.Tensor] = {}
    stray: list[str] = []
    for k, t in state.items():
        if k in head_keys:
            continue
        if conv == "trlx" and k.startswith(HYDRA_PREFIX):
            frozen_head[k[len(HYDRA_PREFIX) :]] = t
            continue
        if k.startswith(prefix):
            backbone[k[len(prefix) :]] = t
        elif k.startswith(lm_prefix) and k[len(lm_prefix) :].startswith(LM_HEAD_PREFIXES):
            lm_head[k[len(lm_prefix) :]] = t
        else:
            stray.append(k)
    if stray:
        raise InputError(
            f"{src}: tensors that belong to neither the backbone ({prefix}*) nor the head: "
            f"{', '.join(sorted(stray)[:5])}" + (f" ... ({len(stray)} in all)" if len(stray) > 5 else "")
        )
    width = int(head["0.weight"].shape[1]) if mlp else int(head["weight"].shape[-1])
    rows = int(head["2.weight"].shape[0]) if mlp else int(head["weight"].shape[0])
    if rows != 1:
        raise InputError(f"{src}: the head has {rows} outputs; a reward model or critic has one.")
    problem = head_width_problem(width, config)
    if problem is not None:
        raise InputError(f"{src}: {problem}.")
    config = dict(config)
    emb = token_embedding_key(backbone)
    declared = config.get("vocab_size")
    if emb is not None and isinstance(declared, int) and declared != int(backbone[emb].shape[0]):
        # DeepSpeed-Chat resizes the embedding to a multiple of 8 after building the model from its config; a config
        # that lags it (the base model's, copied beside weights save_zero_three_model wrote) builds the wrong size
        rows = int(backbone[emb].shape[0])
        config["vocab_size"] = rows
        notes.append(f"config.json says vocab_size {declared}, the embedding has {rows} rows: vocab_size set to it")
    readout = rec_rule or readout_for(conv, the_role)
    return Canon(
        convention=conv,
        role=the_role,
        config=config,
        base=base,
        backbone=backbone,
        lm_head=lm_head,
        head=head,
        mlp=mlp,
        readout=readout,
        normalization=normalization,
        notes=tuple(notes),
        frozen_head=frozen_head,
    )


# ------------------------------------------------------------------------------------------------- the heads
def mlp_as_linear(head: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """trlx's MLP head ``W2 ReLU(W0 x + b0) + b2`` as one linear map ``(w [1, h], b [1])``, or None when it is not one.

    With ``b0 = 0``, ``ReLU(t) = (t + |t|) / 2`` gives ``f(x) = ½ Σ_j w2_j w0_j·x + ½ Σ_j w2_j |w0_j·x| + b2``; the
    second sum vanishes for every ``x`` exactly when, for each direction of the rows ``w0_j`` (up to sign and
    scale), ``Σ w2_j ‖w0_j‖`` over the rows along it is zero. ``[I; −I]`` with ``[w, −w]`` is the lossless case.
    """
    import torch

    w0, b0 = head["0.weight"].double(), head["0.bias"].double()
    w2, b2 = head["2.weight"].double()[0], head["2.bias"].double()
    live = w2 != 0
    if bool((b0[live] != 0).any()):
        return None
    norms = w0.norm(dim=1)
    groups: dict[tuple[float, ...], float] = {}
    scale = float(w2.abs().max()) * float(norms.max()) if bool(live.any()) else 1.0
    for j in torch.nonzero(live & (norms > 0)).flatten().tolist():
        d = w0[j] / norms[j]
        first = d[torch.nonzero(d.abs() > 1e-12)[0, 0]]
        sign = 1.0 if float(first) > 0 else -1.0
        key = tuple(round(float(v) * sign, 9) for v in d)
        groups[key] = groups.get(key, 0.0) + float(w2[j] * norms[j])
    if any(abs(v) > 1e-6 * max(scale, 1e-30) for v in groups.values()):
        return None
    weight = 0.5 * (w2.unsqueeze(1) * w0).sum(0, keepdim=True)
    return weight.to(head["2.weight"].dtype), b2.to(head["2.bias"].dtype)


def linear_as_mlp(weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """A linear head ``w·x + b`` as trlx's MLP, exactly: ``W0 = [I; −I]``, ``b0 = 0``, ``W2 = [w, −w]``, ``b2 = b``.

    ``ReLU(x) − ReLU(−x) = x`` elementwise, so ``[w, −w]·ReLU([I; −I] x) = w·x`` with no rounding beyond the
    forward's own.
    """
    import torch

    h = int(weight.shape[-1])
    eye = torch.eye(h, dtype=weight.dtype)
    return {
        "0.weight": torch.cat([eye, -eye], 0),
        "0.bias": torch.zeros(2 * h, dtype=weight.dtype),
        "2.weight": torch.cat([weight, -weight], 1).clone(),
        "2.bias": (bias if bias is not None else torch.zeros(1, dtype=weight.dtype)).clone().reshape(1),
    }


def linear_head(canon: Canon, *, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head as ``(weight [1, n], bias [1] or None)``; a non-linear trlx MLP is refused (``what`` says for whom).

    Raises:
        InputError: the MLP is not exactly linear.
    """
    if not canon.mlp:
        return canon.head["weight"], canon.head.get("bias")
    lin = mlp_as_linear(canon.head)
    if lin is None:
        raise InputError(
            f"trlx's MLP value head (v_head.0 -> ReLU -> v_head.2) is not a linear map, so {what} (a linear head) "
            "cannot hold it exactly; `vhtool score` reads the trlx checkpoint as it is."
        )
    return lin


def bias_value(bias: torch.Tensor | None) -> float:
    return 0.0 if bias is None else float(bias.double().reshape(-1)[0])


__all__ = [
    "Canon",
    "bias_value",
    "detect",
    "family_base_prefix",
    "linear_as_mlp",
    "linear_head",
    "mlp_as_linear",
    "read_canon",
]


# ------------------------------------------------------------------------------------------------ writing
#: The targets this module writes (the others go through the header-level converter when the source is one of its
#: conventions; a framework source always comes here).
FRAMEWORK_TARGETS = ("openrlhf", "deepspeed-chat", "trlx", "vhtool", "seq-cls", "token-cls")


@dataclass(frozen=True)
class Written:
    """What :func:`write_target` put in the folder."""

    files: list[tuple[str, str]]  # (file name, "safetensors" | "pickle")
    head: tuple[str, ...]
    config: dict[str, Any]
    lost: list[str]
    warnings: list[str]
    notes: list[str]


def _causal_arch(config: Mapping[str, Any]) -> list[str] | None:
    from vhtool.checkpoint.convert.naming import target_architecture

    arch = target_architecture(dict(config), "vhtool")
    return [arch] if arch else None


def _lm_head(canon: Canon, *, to: str) -> dict[str, torch.Tensor]:
    """The causal LM head a trlx/vhtool target needs: the source's, or the tied embedding's copy."""
    from vhtool.checkpoint.conventions import ties_embeddings

    if canon.lm_head:
        return dict(canon.lm_head)
    if ties_embeddings(canon.config):
        return {}  # tied: transformers re-ties lm_head.weight to the embedding on load
    raise InputError(
        f"--to {to} is a causal LM with a value head, and the source has no LM head (tie_word_embeddings is false)."
    )


def write_target(
    canon: Canon, tmp: Path, *, to: str, role: str, allow_lossy: bool, head_name: str | None = None
) -> Written:
    """Writes ``canon`` into ``tmp`` in the ``to`` convention (files, ``config.json``); returns what it wrote.

    Raises:
        InputError: a non-linear trlx head to a linear target, a non-zero bias a bias-less head cannot hold
            (without ``allow_lossy``), an LM head the target needs and the source lacks.
    """
    import torch
    from safetensors.torch import save_file

    from vhtool.checkpoint.convert.naming import default_head_name, target_architecture

    lost: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    width = int(canon.head["0.weight" if canon.mlp else "weight"].shape[-1])
    problem = target_width_problem(to, width, canon.config)
    if problem is not None:
        raise InputError(f"{problem}.")
    config = dict(canon.config)
    for key in ("normalize_reward", "mean", "std", "value_head_prefix", "end_token_id", "auto_map"):
        config.pop(key, None)
    base = canon.base
    state: dict[str, torch.Tensor] = {}
    if to == "trlx":
        head_t = dict(canon.head) if canon.mlp else linear_as_mlp(canon.head["weight"], canon.head.get("bias"))
        if not canon.mlp:
            notes.append("the linear head is written as trlx's MLP [I; -I] -> ReLU -> [w, -w] (exact, nothing lost)")
        lm = _lm_head(canon, to=to)
        state.update({f"base_model.{base}.{k}": v for k, v in canon.backbone.items()})
        if not lm:  # trlx's state_dict lists the tied LM head under its own name too (strict load needs it)
            tied = token_embedding_key(canon.backbone)
            if tied is None:
                raise InputError("--to trlx: cannot find the token embedding the tied LM head is.")
            lm = {"lm_head.weight": canon.backbone[tied]}
        state.update({f"base_model.{k}": v for k, v in lm.items()})
        state.update({f"v_head.{k}": v for k, v in head_t.items()})
        head = tuple(f"v_head.{k}" for k in head_t)
        config["architectures"] = _causal_arch(canon.config)
    else:
        weight, bias = linear_head(canon, what=f"--to {to}")
        b = bias_value(bias)
        keeps_bias = to in ("vhtool", "token-cls")
        if bias is not None and not keeps_bias and b != 0.0:
            if not allow_lossy:
                raise InputError(
                    f"the head's bias is {b:g} and --to {to} has a head without bias: every reward would shift by "
                    "it; pass --allow-lossy to drop it (recorded), or convert --to token-cls, which keeps it."
                )
            lost.append(f"head bias = {b:g}")
            warnings.append(f"dropped the head's bias {b:g}: rewards shift by that constant")
        w = weight.reshape(1, -1)
        if to == "openrlhf":
            state.update({f"{base}.{k}": v for k, v in canon.backbone.items()})
            state["score.weight"] = w
            head = ("score.weight",)
            config["architectures"] = ["RewardModel" if role == "reward" else "CriticModel"]
            config["value_head_prefix"] = "score"
            norm = canon.normalization
            config["normalize_reward"] = bool(norm.get("normalize_reward"))
            if norm.get("normalize_reward"):
                config["mean"], config["std"] = norm["mean"], norm["std"]
            config["use_cache"] = False
            for key in ("id2label", "label2id", "num_labels"):
                config.pop(key, None)
        elif to == "deepspeed-chat":
            backbone = dict(canon.backbone)
            emb = token_embedding_key(backbone)
            rows = int(backbone[emb].shape[0]) if emb is not None else 0
            if emb is not None and rows % 8:
                # create_hf_model resizes the embedding to 8 * ceil(len(tokenizer) / 8) before loading, and its loader
                # drops a tensor of another shape silently (random embeddings): write it at that size already
                padded = 8 * -(-rows // 8)
                t = backbone[emb]
                backbone[emb] = torch.cat([t, t.new_zeros(padded - rows, *t.shape[1:])])
                config["vocab_size"] = padded
                notes.append(
                    f"the embedding's {rows} rows padded with zeros to {padded}, the multiple of 8 DeepSpeed-Chat "
                    f"resizes it to (for a tokenizer of {rows} tokens); no token id below {rows} changes"
                )
            state.update({f"rwtransformer.{k}": v for k, v in backbone.items()})
            state["v_head.weight"] = w
            head = ("v_head.weight",)
            config["architectures"] = _causal_arch(canon.config)
            eos = config.get("eos_token_id")
            config["end_token_id"] = eos
            config["pad_token_id"] = eos  # model_utils.py:111
            for key in ("id2label", "label2id", "num_labels"):
                config.pop(key, None)
        elif to == "vhtool":
            lm = _lm_head(canon, to=to)
            state.update({f"{base}.{k}": v for k, v in canon.backbone.items()})
            state.update(lm)
            state["v_head.summary.weight"] = w
            state["v_head.summary.bias"] = (bias if bias is not None else torch.zeros(1, dtype=w.dtype)).reshape(1)
            head = ("v_head.summary.weight", "v_head.summary.bias")
            config["architectures"] = _causal_arch(canon.config)
        else:  # seq-cls, token-cls
            name = head_name or default_head_name(config, to, {})
            state.update({f"{base}.{k}": v for k, v in canon.backbone.items()})
            state[f"{name}.weight"] = w
            head = (f"{name}.weight",)
            if to == "token-cls":
                state[f"{name}.bias"] = (bias if bias is not None else torch.zeros(1, dtype=w.dtype)).reshape(1)
                head = (*head, f"{name}.bias")
            arch = target_architecture(dict(canon.config), to)
            if arch is None:
                raise InputError(f"cannot name the {to} class of model_type {canon.config.get('model_type')!r}.")
            from vhtool.checkpoint.convert.naming import transformers_has

            if not transformers_has(arch):  # OPT has no ...ForTokenClassification, for one
                raise InputError(
                    f"--to {to}: transformers has no {arch}, so nothing could load the result; "
                    f"convert --to {'seq-cls' if to == 'token-cls' else 'token-cls'} or vhtool instead."
                )
            config["architectures"] = [arch]
            config["id2label"], config["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
            config.pop("num_labels", None)
            if canon.normalization.get("normalize_reward"):  # kept for OpenRLHF, which reads it from config.json
                config.update({k: canon.normalization[k] for k in ("normalize_reward", "mean", "std")})
    if canon.frozen_head:
        what = f"trlx's hydra reference branch {hydra_summary(canon.frozen_head)}"
        if to == "trlx":
            state.update({f"{HYDRA_PREFIX}{k}": v for k, v in canon.frozen_head.items()})
            notes.append(f"kept {what} unchanged, for trlx's AutoModelForCausalLMWithHydraValueHead")
        else:
            notes.append(
                f"dropped {what}: a frozen copy of the reference's top layers, not part of the value model; "
                f"{to} has no place for it (--to trlx keeps it)"
            )
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    if to in ("deepspeed-chat", "trlx"):
        from vhtool.checkpoint.catalogue import PICKLE_FILE

        torch.save(state, tmp / PICKLE_FILE)
        notes.append(
            f"wrote {PICKLE_FILE} (plain tensors, readable with weights_only=True): {TABLE[to].framework}'s loader "
            "reads nothing else"
        )
        files = [(PICKLE_FILE, "pickle")]
    else:
        from vhtool.checkpoint.catalogue import SINGLE_FILE

        save_file(state, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        files = [(SINGLE_FILE, "safetensors")]
    if canon.normalization.get("normalize_reward") and to not in ("openrlhf", "seq-cls", "token-cls"):
        warnings.append(
            f"{to} has no place for the normalisation (r - {canon.normalization['mean']:g}) / "
            f"{canon.normalization['std']:g}: vhtool.json records it (vhtool score applies it), "
            f"{TABLE[to].framework} will not"
        )
    change = readout_change_note(to=to, role=role, source=canon.convention, rule=canon.readout)
    if change is not None:
        notes.append(change)
    return Written(files=files, head=head, config=config, lost=lost, warnings=warnings, notes=notes)


def needs_framework_path(src: Path, *, to: str, source: str, config_from: Path | None) -> bool:
    """Whether ``convert`` goes through this module: a framework target or source, pickles, or a bare state dict."""
    from vhtool.checkpoint.layout import open_checkpoint
    from vhtool.checkpoint.pickle_src import weight_files

    if to in ("openrlhf", "deepspeed-chat", "trlx") or config_from is not None:
        return True
    if source not in ("auto", "vhtool", "sidecar", "seq-cls", "token-cls"):
        return True
    try:
        fmt, _ = weight_files(src)
        if fmt == "pickle":
            return True
        ckpt = open_checkpoint(src)
    except InputError:
        return False  # the header-level converter reports what is wrong
    fw = detect_framework(set(ckpt.tensors), ckpt.config)
    if fw is None:
        return False
    # OpenRLHF and verl keep transformers' own backbone names: between them and vhtool's conventions the
    # header-level converter renames the head only and streams the rest (it records their readout too)
    return fw.convention.name not in ("openrlhf", "verl") or source != "auto" or to not in ("vhtool", "sidecar")


def convert_framework(
    src: Path,
    out: Path,
    *,
    to: str,
    source: str,
    role: str | None,
    allow_pickle: bool,
    config_from: Path | None,
    allow_lossy: bool,
    head_name: str | None,
    force: bool,
    durable: bool,
) -> tuple[Canon, Written, list[Any], str]:
    """``convert`` through the canonical form: read ``src``, write ``to`` into ``out`` (atomically, with a manifest).

    Returns:
        the source read, what was written, the file records and the role.
    """
    import shutil

    from vhtool.checkpoint.atomic import atomic_output_dir
    from vhtool.checkpoint.catalogue import CONFIG_FILE, init_copies
    from vhtool.checkpoint.copyio import FileRecord, hash_file
    from vhtool.checkpoint.layout import safe_member
    from vhtool.checkpoint.manifest import ConversionInfo, Manifest, SourceInfo, files_section, write_manifest

    if to == "sidecar":
        raise InputError(f"{src}: --to sidecar reads vhtool's own conventions only; convert --to vhtool instead.")
    canon = read_canon(src, allow_pickle=allow_pickle, config_from=config_from, source=source, role=role)
    the_role = role or canon.role
    with atomic_output_dir(out, force=force, durable=durable, inputs=[src]) as tmp:
        for p in sorted(src.iterdir()):
            if p.is_file() and init_copies(p.name) and p.name != CONFIG_FILE:
                shutil.copyfile(safe_member(src, p.name, "a source file"), tmp / p.name)
        written = write_target(canon, tmp, to=to, role=the_role, allow_lossy=allow_lossy, head_name=head_name)
        import json

        (tmp / CONFIG_FILE).write_text(json.dumps(written.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        records = [
            FileRecord(name, (tmp / name).stat().st_size, hash_file(tmp / name), "written")
            for name, _ in written.files
        ]
        manifest = Manifest.new(
            role=the_role,
            architecture="causal",
            source=SourceInfo(model=str(src.resolve()), convention=canon.convention),
            conversion=ConversionInfo(
                source=canon.convention,
                target=to,
                source_head=tuple(sorted(canon.head)),
                lost=tuple(written.lost),
                readout=canon.readout,
            ),
            files=files_section(records),
            normalization=dict(canon.normalization) or None,
        )
        write_manifest(tmp, manifest)
    return canon, written, records, the_role
