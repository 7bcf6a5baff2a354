"""Checkpoints saved the way each RLHF framework saves them, and each framework's reward computed its way.

OpenRLHF 0.11.2's model code imports deepspeed (not installable here), so its save path is reimplemented from
``openrlhf/models/model.py`` (``_get_reward_model`` / ``_get_critic_model``: a class built at run time on the
family's base class, the backbone under ``base_model_prefix``, ``nn.Linear(h, 1, bias=False)`` at
``value_head_prefix``, ``save_pretrained``); DeepSpeed-Chat's from ``dschat/utils/model/reward_model.py`` and
``model_utils.py`` (``create_hf_model`` + ``RewardModel``, saved by ``save_hf_format``: ``torch.save`` of the
state dict + ``config.to_json_file``); trlx's from ``trlx/models/modeling_ppo.py`` (``make_head``,
``AutoModelForCausalLMWithValueHead.state_dict``: ``base_model.*`` + ``v_head.*``, ``pytorch_model.bin`` as
transformers 4.32 wrote it); verl's critic as ``AutoModelForTokenClassification`` merged under its causal LM's
``architectures`` with ``dtype: bfloat16``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from vhtool.hub import resolve_source

IDS = [
    [5, 17, 33, 2, 41],
    [7, 8, 9],
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
    [30, 31],
]


def builtin(name: str | Path) -> Path:
    return name if isinstance(name, Path) else resolve_source(f"builtin:{name}").path


def tiny_opt(out: Path, *, hidden_size: int = 32, word_embed_proj_dim: int = 24, seed: int = 0) -> Path:
    """A tiny OPT causal LM (opt-350m's shape: ``word_embed_proj_dim`` != ``hidden_size``, so the decoder projects
    its output back down, modeling_opt.py ``project_out``) with tiny-gpt2's tokenizer (OPT's is GPT-2's)."""
    from transformers import OPTConfig, OPTForCausalLM

    tok = AutoTokenizer.from_pretrained(builtin("tiny-gpt2"))
    config = OPTConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        word_embed_proj_dim=word_embed_proj_dim,
        ffn_dim=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=1,
        do_layer_norm_before=False,  # opt-350m's: post-LN, so no final layer norm before project_out
        dropout=0.0,
    )
    torch.manual_seed(seed)
    OPTForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------------------- OpenRLHF
def openrlhf_class(config: Any, role: str, value_head_prefix: str = "score") -> Any:
    """openrlhf/models/model.py:77-82, 177-202 and 245-270: the class built at run time."""
    base_class = AutoModel._model_mapping[type(config)]
    base_pretrained_class = base_class.__base__

    class RewardModel(base_pretrained_class):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            setattr(self, self.base_model_prefix, base_class(config))
            self.value_head_prefix = value_head_prefix
            setattr(self, value_head_prefix, nn.Linear(config.hidden_size, 1, bias=False))
            self.normalize_reward = config.normalize_reward
            self.register_buffer("mean", torch.zeros(1), persistent=False)
            self.register_buffer("std", torch.ones(1), persistent=False)
            if hasattr(config, "mean"):
                self.mean[0] = config.mean
                self.std[0] = config.std
            self.post_init()

        def values(self, input_ids: Any, attention_mask: Any) -> Any:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            out = getattr(self, self.base_model_prefix)(
                input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
            return getattr(self, self.value_head_prefix)(out["last_hidden_state"]).squeeze(-1)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            values = self.values(input_ids, attention_mask)
            if role == "critic":
                return (values - self.mean) / self.std if self.normalize_reward else values
            eos_indices = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
            reward = values.gather(dim=1, index=eos_indices).squeeze(1)
            if not self.training and self.normalize_reward:
                reward = (reward - self.mean) / self.std
            return reward

    RewardModel.__name__ = RewardModel.__qualname__ = "RewardModel" if role == "reward" else "CriticModel"
    return RewardModel


def save_openrlhf(
    family: str,
    out: Path,
    *,
    role: str = "reward",
    normalize: bool = False,
    mean: float = 0.0,
    std: float = 1.0,
    legacy: bool = False,
    seed: int = 0,
) -> Path:
    """An OpenRLHF reward model / critic as ``train_rm.py`` saves it (bf16 by default; fp32 here for 1e-4)."""
    src = builtin(family)
    config = AutoConfig.from_pretrained(src)
    config.normalize_reward = normalize
    prefix = "value_head" if legacy else "score"
    cls = openrlhf_class(config, role, prefix)
    torch.manual_seed(seed)
    model = cls.from_pretrained(src, config=config)
    getattr(model, prefix).weight.data.normal_(0, 1 / (config.hidden_size + 1) ** 0.5)
    model.config.use_cache = False
    if not legacy:  # releases before 0.5.3 wrote no value_head_prefix
        model.config.value_head_prefix = prefix
    if normalize:
        model.config.mean, model.config.std = mean, std  # rm_trainer.py:296
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def openrlhf_reward(path: Path, ids: list[int], *, role: str = "reward") -> float:
    """OpenRLHF's number: the dataset appends the EOS (reward_dataset.py:142-169), the model reads the last token."""
    config = AutoConfig.from_pretrained(path)
    prefix = getattr(config, "value_head_prefix", "value_head")
    model = openrlhf_class(config, role, prefix).from_pretrained(path, config=config).eval()
    # transformers 5 builds the model on the meta device, so the non-persistent mean/std buffers __init__ fills
    # come back uninitialised: set them as __init__ does (model.py:191-198)
    model.mean.fill_(float(getattr(config, "mean", 0.0)))
    model.std.fill_(float(getattr(config, "std", 1.0)))
    eos = int(AutoTokenizer.from_pretrained(path).eos_token_id)
    seq = ids if ids[-1] == eos else [*ids, eos]
    x = torch.tensor([seq])
    with torch.no_grad():
        out = model(x, torch.ones_like(x))
    return float(out[0] if role == "reward" else out[0, -1])


# ------------------------------------------------------------------------------------------ DeepSpeed-Chat
class DSRewardModel(nn.Module):
    """dschat/utils/model/reward_model.py:10-32 and forward_value (130-167)."""

    def __init__(self, base_model: Any, pad_id: int, num_padding_at_beginning: int = 0) -> None:
        super().__init__()
        self.config = base_model.config
        self.num_padding_at_beginning = num_padding_at_beginning
        if hasattr(self.config, "word_embed_proj_dim"):
            self.v_head = nn.Linear(self.config.word_embed_proj_dim, 1, bias=False)
        else:
            self.config.n_embd = getattr(self.config, "hidden_size", None) or self.config.n_embd
            self.v_head = nn.Linear(self.config.n_embd, 1, bias=False)
        self.rwtransformer = base_model
        self.PAD_ID = pad_id

    def forward_value(self, input_ids: Any, attention_mask: Any, prompt_length: int) -> Any:
        hidden = self.rwtransformer(input_ids, attention_mask=attention_mask, use_cache=False)[0]
        values = self.v_head(hidden).squeeze(-1)
        scores = []
        for i in range(values.size(0)):
            c_inds = (input_ids[i][prompt_length:] == self.PAD_ID).nonzero()
            c_ind = c_inds[0].item() + prompt_length if len(c_inds) > 0 else input_ids.shape[1]
            scores.append(values[i][c_ind - 1])
        return torch.stack(scores)


def save_deepspeed_chat(family: str | Path, out: Path, *, seed: int = 0, legacy: bool = False) -> Path:
    """create_critic_model (model_utils.py:115-160) then save_hf_format: pytorch_model.bin + config.json."""
    src = builtin(family)
    tok = AutoTokenizer.from_pretrained(src)
    base = AutoModel.from_pretrained(src)
    base.config.end_token_id = tok.eos_token_id  # model_utils.py:107-112
    base.config.pad_token_id = base.config.eos_token_id
    base.resize_token_embeddings(int(8 * math.ceil(len(tok) / 8.0)))
    model = DSRewardModel(base, tok.eos_token_id)
    torch.manual_seed(seed)
    model.v_head.weight.data.normal_(0, 0.2)
    out.mkdir(parents=True)
    state = model.state_dict()
    if legacy:  # before 2023-10 the attribute was misspelt
        state = {k.replace("rwtransformer.", "rwtranrsformer."): v for k, v in state.items()}
    torch.save(state, out / "pytorch_model.bin")
    model.config.to_json_file(str(out / "config.json"))
    tok.save_pretrained(out)
    return out


def deepspeed_chat_load(path: Path) -> DSRewardModel:
    """create_critic_model(rlhf_training=True): from_config, then the state dict (their loader, strict here)."""
    config = AutoConfig.from_pretrained(path)
    base = AutoModel.from_config(config)
    tok = AutoTokenizer.from_pretrained(path)
    base.resize_token_embeddings(int(8 * math.ceil(len(tok) / 8.0)))  # create_hf_model, model_utils.py:107-112
    model = DSRewardModel(base, tok.eos_token_id)
    state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    state = {k.replace("rwtranrsformer.", "rwtransformer."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def deepspeed_chat_reward(path: Path, ids: list[int]) -> float:
    """forward_value with the answer ending in the end token and right-padded with the pad (= eos) id."""
    model = deepspeed_chat_load(path)
    eos = int(AutoTokenizer.from_pretrained(path).eos_token_id)
    seq = [*ids, eos, eos, eos]
    x = torch.tensor([seq])
    mask = torch.tensor([[1] * (len(ids) + 1) + [0, 0]])
    with torch.no_grad():
        return float(model.forward_value(x, mask, prompt_length=min(2, len(ids) - 1) or 1)[0])


# -------------------------------------------------------------------------------------------------- trlx
def make_head(n_embd: int, out: int) -> nn.Sequential:
    """trlx/utils/modeling.py make_head."""
    return nn.Sequential(nn.Linear(n_embd, n_embd * 2), nn.ReLU(), nn.Linear(n_embd * 2, out))


class TrlxValueModel(nn.Module):
    """AutoModelForCausalLMWithValueHead (modeling_ppo.py): base_model + v_head, state_dict with those prefixes."""

    def __init__(self, base_model: Any) -> None:
        super().__init__()
        self.base_model = base_model
        self.v_head = make_head(base_model.config.hidden_size, 1)

    def value(self, input_ids: Any) -> Any:
        out = self.base_model(input_ids, output_hidden_states=True, return_dict=True)
        return self.v_head(out.hidden_states[-1]).squeeze(-1)


class ModelBranch(nn.Module):
    """modeling_ppo.py ModelBranch.__init__: deep copies of the top ``num_layers_unfrozen`` decoder blocks, the final
    norm and the LM head of the causal LM (GPT-2 here: ``transformer.h``, ``transformer.ln_f``, ``lm_head``)."""

    def __init__(self, base_model: Any, num_layers_unfrozen: int) -> None:
        super().__init__()
        from copy import deepcopy

        self.decoder_blocks = deepcopy(base_model.transformer.h[-num_layers_unfrozen:])
        self.final_norm = deepcopy(base_model.transformer.ln_f)
        self.lm_head = deepcopy(base_model.get_output_embeddings())
        for p in self.parameters():
            p.requires_grad_(False)


class TrlxHydraValueModel(TrlxValueModel):
    """AutoModelForCausalLMWithHydraValueHead: the value model plus ``frozen_head`` (state_dict: ``frozen_head.*``)."""

    def __init__(self, base_model: Any, num_layers_unfrozen: int) -> None:
        super().__init__(base_model)
        self.frozen_head = ModelBranch(base_model, num_layers_unfrozen)


def save_trlx(
    family: str,
    out: Path,
    *,
    seed: int = 0,
    head: dict[str, torch.Tensor] | None = None,
    hydra_layers: int = 0,
) -> Path:
    src = builtin(family)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(src)
    model = TrlxHydraValueModel(base, hydra_layers) if hydra_layers else TrlxValueModel(base)
    if head is not None:
        model.v_head.load_state_dict(head)
    out.mkdir(parents=True)
    torch.save(model.state_dict(), out / "pytorch_model.bin")  # what save_pretrained wrote in the 4.32 era
    model.base_model.config.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def trlx_load(path: Path) -> TrlxValueModel:
    """trlx's from_pretrained: the causal LM from config, then post_init's strict load_state_dict (the hydra class,
    rebuilding ``frozen_head`` with as many blocks as the checkpoint has, when there are ``frozen_head.*`` keys)."""
    config = AutoConfig.from_pretrained(path)
    state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    blocks = {k.split(".")[2] for k in state if k.startswith("frozen_head.decoder_blocks.")}
    base = AutoModelForCausalLM.from_config(config)
    model = TrlxHydraValueModel(base, len(blocks)) if blocks else TrlxValueModel(base)
    model.load_state_dict(state, strict=True)
    return model.eval()


def trlx_value(path: Path, ids: list[int]) -> float:
    with torch.no_grad():
        return float(trlx_load(path).value(torch.tensor([ids]))[0, -1])


# -------------------------------------------------------------------------------------------------- verl
def save_verl(family: str, out: Path, *, seed: int = 0) -> Path:
    """A merged FSDP critic: token-cls tensors in fp32 under the causal LM's architectures and dtype bfloat16."""
    src = builtin(family)
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(src, num_labels=1)
    model.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["architectures"] = json.loads((src / "config.json").read_text())["architectures"]
    cfg["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def verl_value(path: Path, ids: list[int]) -> float:
    cfg = AutoConfig.from_pretrained(path)
    cfg.architectures = None
    model = AutoModelForTokenClassification.from_pretrained(path, config=cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        return float(model(torch.tensor([ids])).logits[0, -1, 0])
