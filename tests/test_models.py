"""The value-head classes: TRL-compatible behaviour and each TRL 1.12.0 defect vhtool must not have."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import vhtool
from tests.helpers import CAUSAL_ARCHS, SEQ2SEQ_ARCHS, VOCAB, build_tiny
from vhtool.errors import CheckpointError, InputError

ALL_ARCHS = CAUSAL_ARCHS + SEQ2SEQ_ARCHS


def wrapper_cls(arch: str) -> Any:
    return (
        vhtool.AutoModelForSeq2SeqLMWithValueHead
        if arch in SEQ2SEQ_ARCHS
        else vhtool.AutoModelForCausalLMWithValueHead
    )


def trl_cls(arch: str) -> Any:
    from trl.experimental.ppo import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

    return AutoModelForSeq2SeqLMWithValueHead if arch in SEQ2SEQ_ARCHS else AutoModelForCausalLMWithValueHead


def batch(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if arch in SEQ2SEQ_ARCHS:
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 4), generator=g)
    return out


def outputs(model: Any, arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        logits, _, value = model(**batch(arch))
    return logits, value


def load_quiet(cls: Any, path: Any, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(str(path), **kw)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_forward_shapes_and_save_reload(arch: str, saved_model: Any, tmp_path: Path) -> None:
    model = load_quiet(wrapper_cls(arch), saved_model(arch), v_head_init_strategy="normal")
    assert model.v_head_loaded is False
    logits, value = outputs(model, arch)
    seq = 4 if arch in SEQ2SEQ_ARCHS else 7
    assert logits.shape == (2, seq, VOCAB)
    assert value.shape == (2, seq)
    assert logits.dtype == torch.float32
    model.save_pretrained(tmp_path / "saved")
    again = wrapper_cls(arch).from_pretrained(str(tmp_path / "saved"))
    assert again.v_head_loaded is True
    logits2, value2 = outputs(again, arch)
    assert torch.equal(logits, logits2)
    assert torch.equal(value, value2)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_value_equals_head_on_last_hidden_state(arch: str, saved_model: Any) -> None:
    """The hook-captured hidden state is exactly ``hidden_states[-1]`` (what TRL feeds the head)."""
    model = load_quiet(wrapper_cls(arch), saved_model(arch))
    model.eval()
    b = batch(arch)
    with torch.no_grad():
        _, _, value = model(**b)
        full = model.pretrained_model(**b, output_hidden_states=True)
        last = full.decoder_hidden_states[-1] if arch in SEQ2SEQ_ARCHS else full.hidden_states[-1]
        expected = model.v_head(last).squeeze(-1)
    assert torch.equal(value, expected)


def test_forward_does_not_request_all_hidden_states(saved_model: Any) -> None:
    model = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"))
    seen: dict[str, Any] = {}
    model.pretrained_model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    outputs(model, "gpt2")
    assert "input_ids" in seen
    assert not seen.get("output_hidden_states")


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama", "t5"])
def test_hidden_size_from_config(arch: str) -> None:
    from tests.helpers import tiny_config

    cfg = tiny_config(arch, hidden=48)
    head = vhtool.ValueHead(cfg)
    expected = 24 if arch == "opt" else 48  # OPT projects to word_embed_proj_dim before the LM head
    assert head.summary.weight.shape == (1, expected)


def test_normal_init_statistics_on_a_wide_head() -> None:
    model = build_tiny("gpt2")
    cfg = SimpleNamespace(hidden_size=16384)
    for rng in (0.2, 0.05):
        head = vhtool.ValueHead(cfg)
        wrapper = SimpleNamespace(v_head=head)
        vhtool.PreTrainedModelWrapper._init_weights(
            wrapper, v_head_init_strategy="normal", v_head_initializer_range=rng
        )
        std = head.summary.weight.std().item()
        assert abs(std - rng) / rng < 0.1
        assert head.summary.bias.item() == 0.0
    wrapped = vhtool.AutoModelForCausalLMWithValueHead(model, v_head_init_strategy="normal")
    assert wrapped.v_head.summary.bias.item() == 0.0


def test_unknown_init_strategy_raises() -> None:
    model = build_tiny("gpt2")
    with pytest.raises(InputError, match="unknown v_head_init_strategy"):
        vhtool.AutoModelForCausalLMWithValueHead(model, v_head_init_strategy="xavier")


def test_kwargs_are_split(saved_model: Any) -> None:
    cls = vhtool.AutoModelForCausalLMWithValueHead
    head, rest, kbit = cls._split_kwargs(
        {
            "summary_dropout_prob": 0.0,
            "v_head_initializer_range": 0.1,
            "use_gradient_checkpointing": True,
            "dtype": "x",
        }
    )
    assert head == {"summary_dropout_prob": 0.0, "v_head_initializer_range": 0.1}
    assert kbit == {"use_gradient_checkpointing": True}
    assert rest == {"dtype": "x"}
    model = load_quiet(cls, saved_model("gpt2"), summary_dropout_prob=0.0, dtype=torch.float64)
    assert isinstance(model.v_head.dropout, torch.nn.Identity)
    assert next(model.pretrained_model.parameters()).dtype == torch.float64


def test_missing_value_head_is_reported_never_silent(saved_model: Any) -> None:
    """TRL keeps a random head silently when the file exists but has no v_head.* keys."""
    with pytest.warns(UserWarning, match="no value-head weights"):
        model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(saved_model("gpt2")))
    assert model.v_head_loaded is False
    assert model.v_head_source is None


def test_state_dict_round_trips_through_load_state_dict(saved_model: Any) -> None:
    """TRL #865: its state_dict() keys cannot be fed back to load_state_dict()."""
    a = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"), v_head_init_strategy="normal")
    b = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2", seed=5))
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    sd = a.state_dict()
    assert "v_head.summary.weight" in sd and "transformer.wte.weight" in sd
    result = b.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(x, y) for x, y in zip(outputs(a, "gpt2"), outputs(b, "gpt2")))


def test_no_lm_head_is_a_clear_error() -> None:
    from transformers import GPT2Model

    from tests.helpers import tiny_config

    base = GPT2Model(tiny_config("gpt2"))
    with pytest.raises(InputError, match="no language-model head"):
        vhtool.AutoModelForCausalLMWithValueHead(base)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors_is_a_clear_error(damage: str, saved_model: Any, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(saved_model("gpt2"), d)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"{not json" + data[17:])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(d))


def test_local_path_is_never_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such directory"):
        vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "missing" / "model"))


def test_builtin_models_load_with_their_value_head(tmp_path: Path) -> None:
    from vhtool.checkpoint.init_op import HeadSpec, init_checkpoint
    from vhtool.hub import resolve_source

    src = resolve_source("builtin:tiny-gpt2")
    init_checkpoint(src.path, tmp_path / "p", head=HeadSpec("normal"), source=src.record(), durable=False)
    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "p"))
    assert model.v_head_loaded and model.v_head_source == "model.safetensors"


# ---------------------------------------------------------------- sharded checkpoints (TRL #1917)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_local_sharded_checkpoint_reloads(arch: str, saved_model: Any, tmp_path: Path) -> None:
    model = load_quiet(wrapper_cls(arch), saved_model(arch), v_head_init_strategy="normal")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert "v_head.summary.weight" in index["weight_map"]
    again = wrapper_cls(arch).from_pretrained(str(tmp_path / "sharded"))
    assert again.v_head_loaded
    assert all(torch.equal(x, y) for x, y in zip(outputs(model, arch), outputs(again, arch)))


def test_trl_cannot_reload_a_local_sharded_checkpoint(saved_model: Any, tmp_path: Path) -> None:
    """Documents the TRL defect the previous test guards against."""
    model = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    from huggingface_hub.errors import HFValidationError

    with pytest.raises(HFValidationError):
        trl_cls("gpt2").from_pretrained(str(tmp_path / "sharded"))


def test_sharded_load_reads_only_value_head_shards(saved_model: Any, tmp_path: Path) -> None:
    from vhtool.models import loading

    model = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"))
    model.save_pretrained(tmp_path / "s", max_shard_size="20KB")
    opened: list[str] = []
    real = loading._read_v_head
    loading._read_v_head = lambda path, keys=None: (opened.append(Path(path).name), real(path, keys))[1]  # type: ignore[assignment]
    try:
        state, where = loading.find_value_head_state(loading.resolve_pretrained(str(tmp_path / "s")))
    finally:
        loading._read_v_head = real  # type: ignore[assignment]
    wmap = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())["weight_map"]
    assert opened == [wmap["v_head.summary.weight"]]
    assert set(state) == {"v_head.summary.weight", "v_head.summary.bias"}


# ---------------------------------------------------------------- TRL interop


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gpt-neo", "gpt-neox", "llama", "qwen2", "t5", "bart"])
def test_vhtool_single_file_checkpoint_loads_in_trl(arch: str, saved_model: Any, tmp_path: Path) -> None:
    ours = load_quiet(wrapper_cls(arch), saved_model(arch), v_head_init_strategy="normal")
    ours.save_pretrained(tmp_path / "ours")
    theirs = load_quiet(trl_cls(arch), tmp_path / "ours")
    assert torch.equal(theirs.v_head.summary.weight, ours.v_head.summary.weight)
    assert all(torch.equal(x, y) for x, y in zip(outputs(ours, arch), outputs(theirs, arch)))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
@pytest.mark.parametrize("sharded", [False, True])
def test_trl_checkpoint_loads_in_vhtool(arch: str, sharded: bool, saved_model: Any, tmp_path: Path) -> None:
    theirs = load_quiet(trl_cls(arch), saved_model(arch), v_head_init_strategy="normal")
    theirs.save_pretrained(tmp_path / "theirs", **({"max_shard_size": "20KB"} if sharded else {}))
    ours = vhtool.AutoModelForCausalLMWithValueHead if arch not in SEQ2SEQ_ARCHS else None
    ours = wrapper_cls(arch).from_pretrained(str(tmp_path / "theirs"))
    assert ours.v_head_loaded
    assert all(torch.equal(x, y) for x, y in zip(outputs(theirs, arch), outputs(ours, arch)))


# ---------------------------------------------------------------- PEFT


def test_peft_save_writes_safetensors_head_into_a_new_directory(saved_model: Any, tmp_path: Path) -> None:
    """TRL torch.save()s a pickle into the directory before PEFT has created it."""
    from peft import LoraConfig

    cfg = LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")
    model = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"), peft_config=cfg)
    assert model.is_peft_model
    target = tmp_path / "new" / "adapter"
    model.save_pretrained(target)
    names = sorted(p.name for p in target.iterdir())
    assert "model.safetensors" in names and "adapter_model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt"))]


def test_peft_save_is_read_by_trl_with_the_same_head(saved_model: Any, tmp_path: Path) -> None:
    """TRL 1.12.0 reads a PEFT folder's value head from its model.safetensors: vhtool writes it there."""
    import torch
    from peft import LoraConfig
    from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlCausal

    cfg = LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")
    model = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"), peft_config=cfg)
    with torch.no_grad():
        model.v_head.summary.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        model.v_head.summary.bias.fill_(0.5)
    target = tmp_path / "adapter"
    model.save_pretrained(target)
    theirs = TrlCausal.from_pretrained(str(target))
    ours = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, target)
    assert theirs.is_peft_model and ours.is_peft_model and ours.v_head_loaded
    for other in (theirs, ours):
        for k, v in model.v_head.state_dict().items():
            assert torch.equal(other.v_head.state_dict()[k], v), k
    ids = torch.tensor([[1, 2, 3, 4]])
    theirs.eval(), ours.eval()
    with torch.no_grad():
        assert torch.allclose(theirs(input_ids=ids)[2], ours(input_ids=ids)[2], atol=1e-5)


# ---------------------------------------------------------------- create_reference_model


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gpt-neox", "llama", "t5"])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_reference_shares_exactly_embeddings_and_first_blocks(arch: str, n: int, saved_model: Any) -> None:
    policy = load_quiet(wrapper_cls(arch), saved_model(arch))
    ref = vhtool.create_reference_model(policy, num_shared_layers=n)
    pol = dict(policy.named_parameters())
    shared = set(ref.shared_parameter_names)
    container = {
        "gpt2": "transformer.h",
        "opt": "model.decoder.layers",
        "gpt-neox": "gpt_neox.layers",
        "llama": "model.layers",
        "t5": "encoder.block",
    }[arch]
    for name, p in ref.named_parameters():
        is_block = f".{container}." in f".{name}"
        idx = int(name.split(f"{container}.")[1].split(".")[0]) if is_block else None
        embedding = name.endswith(
            (
                "wte.weight",
                "wpe.weight",
                "shared.weight",
                "embed_tokens.weight",
                "embed_positions.weight",
                "embed_in.weight",
                "project_in.weight",
            )
        )
        expect_shared = (idx is not None and idx < n) or (idx is None and embedding)
        assert (name in shared) == expect_shared, name
        if name in shared:
            assert p is pol[name] and p.data_ptr() == pol[name].data_ptr()
            assert not pol[name].requires_grad
        else:
            assert p.data_ptr() != pol[name].data_ptr()
            assert pol[name].requires_grad
        assert not p.requires_grad
    assert not ref.training
    assert all(torch.equal(x, y) for x, y in zip(outputs(policy, arch), outputs(ref, arch)))


def test_reference_can_share_every_block(saved_model: Any) -> None:
    """TRL cannot: its pattern for block L never matches, so it shares nothing useful."""
    policy = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"))
    ref = vhtool.create_reference_model(policy, num_shared_layers=2)
    names = ref.shared_parameter_names
    assert any(".h.1." in n for n in names)
    assert not any("ln_f" in n or "v_head" in n for n in names)


def test_reference_without_sharing_is_a_full_frozen_copy(saved_model: Any) -> None:
    policy = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"))
    ref = vhtool.create_reference_model(policy)
    pol = dict(policy.named_parameters())
    assert all(p.data_ptr() != pol[n].data_ptr() and not p.requires_grad for n, p in ref.named_parameters())
    assert all(p.requires_grad for p in policy.parameters())


@pytest.mark.parametrize("n", [-1, 3])
def test_reference_out_of_range(n: int, saved_model: Any) -> None:
    policy = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"))
    with pytest.raises(InputError, match=r"2 blocks .*transformer\.h\.\{layer\}"):
        vhtool.create_reference_model(policy, num_shared_layers=n)


def test_reference_pattern_typo_is_an_error_not_a_frozen_policy(saved_model: Any) -> None:
    policy = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, saved_model("gpt2"))
    with pytest.raises(InputError, match="matches no parameter"):
        vhtool.create_reference_model(policy, num_shared_layers=1, pattern="transformer.hh.{layer}")
    assert all(p.requires_grad for p in policy.parameters())
    ref = vhtool.create_reference_model(policy, num_shared_layers=1, pattern="transformer.h.{layer}")
    assert any(".h.0." in n for n in ref.shared_parameter_names)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, torch, warnings
    warnings.simplefilter("ignore")
    from transformers import GPT2Config, AutoModelForCausalLM

    def hwm():  # peak RSS of this process since the last reset, in bytes
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=8, n_embd=512, n_head=8, vocab_size=16000, n_positions=256)
    base = AutoModelForCausalLM.from_config(cfg)
    if sys.argv[1] == "vhtool":
        from vhtool import AutoModelForCausalLMWithValueHead as C, create_reference_model as make
    else:
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as C
        from trl.experimental.ppo.ppo_trainer import create_reference_model as make
    model = C(base)
    import gc; gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS mark to the current RSS
    before = hwm()
    ref = make(model, num_shared_layers=7)
    print(hwm() - before)
    """
)


@pytest.mark.slow
def test_reference_peak_memory_is_below_a_deep_copy(tmp_path: Path) -> None:
    script = tmp_path / "peak.py"
    script.write_text(_PEAK_SCRIPT)
    grow = {}
    for impl in ("vhtool", "trl"):
        out = subprocess.run([sys.executable, str(script), impl], capture_output=True, text=True, check=True)
        grow[impl] = int(out.stdout.strip().splitlines()[-1])
    model_bytes = (16000 * 512 + 256 * 512 + 8 * 12 * 512 * 512) * 4
    # TRL deep-copies everything (~model size); vhtool copies only block 7, the final norm and the head.
    assert grow["trl"] > 0.8 * model_bytes
    assert grow["vhtool"] < 0.35 * grow["trl"]


def test_trl_peft_save_is_read_by_vhtool_only_with_consent(saved_model: Any, tmp_path: Path) -> None:
    """TRL 1.12.0 pickles a PEFT policy's value head into pytorch_model.bin: read only with allow_pickle=True."""
    import warnings

    import torch
    from peft import LoraConfig
    from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlCausal

    cfg = LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")
    theirs = TrlCausal.from_pretrained(str(saved_model("gpt2")), peft_config=cfg)
    with torch.no_grad():
        theirs.v_head.summary.bias.fill_(0.25)
    target = tmp_path / "trl-adapter"
    target.mkdir()  # TRL torch.save()s into the folder before PEFT creates it
    theirs.save_pretrained(str(target))
    assert (target / "pytorch_model.bin").is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(target))
    assert not refused.v_head_loaded
    assert any("pickle" in str(w.message) and "allow_pickle=True" in str(w.message) for w in caught)
    ours = load_quiet(vhtool.AutoModelForCausalLMWithValueHead, target, allow_pickle=True)
    assert ours.v_head_loaded and ours.is_peft_model
    for k, v in theirs.v_head.state_dict().items():
        assert torch.equal(ours.v_head.state_dict()[k], v), k
