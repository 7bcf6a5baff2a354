"""Reward adapters: `vhtool attach-reward-adapter`, loading, switching and scoring against PEFT and TRL 1.12.0.

Real reward adapters are trained-looking PEFT LoRA adapters built offline on tiny GPT-2 and Llama
sequence classifiers that share the policy's base weights; their LoRA B matrices, score heads (and
LoRA-trained biases) are random and non-zero, so every comparison would fail if the adapter or the
head were ignored.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import build_tiny

PAD = 127  # the tiny vocabulary's last id; never drawn as a real token below
TARGETS = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "gate_proj"]}
POLICY_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "k_proj"]}


def _save_adapter(
    base: Path,
    out: Path,
    arch: str,
    *,
    bias: str = "none",
    num_labels: int = 1,
    seed: int = 1,
) -> Path:
    """A LoRA reward adapter on ``base`` loaded as a sequence classifier, with non-zero random weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    seq_cls = AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels, pad_token_id=PAD)
    peft_model = get_peft_model(
        seq_cls, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=TARGETS[arch], bias=bias)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or ".score." in name or (bias != "none" and name.endswith(".bias")):
                p.normal_(0.0, 0.5)
    peft_model.save_pretrained(out)
    return out


def _edit_adapter(src: Path, dst: Path, *, drop: str | None = None, config: dict[str, Any] | None = None) -> Path:
    """A copy of ``src`` with tensors containing ``drop`` removed and/or config keys replaced."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if drop:
        state = load_file(str(dst / "adapter_model.safetensors"))
        save_file({k: v for k, v in state.items() if drop not in k}, str(dst / "adapter_model.safetensors"))
    if config:
        doc = json.loads((dst / "adapter_config.json").read_text())
        doc.update(config)
        (dst / "adapter_config.json").write_text(json.dumps(doc))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per arch: the base LM, its `vhtool init` policy, and adapters (plain, bias variants) attached via the CLI."""
    from typer.testing import CliRunner

    from vhtool.cli.app import app

    runner = CliRunner()
    root = tmp_path_factory.mktemp("reward")
    w: dict[str, Any] = {"root": root}
    for arch in ("gpt2", "llama"):
        base = root / f"{arch}-base"
        build_tiny(arch).save_pretrained(base)
        policy = root / f"{arch}-policy"
        res = runner.invoke(app, ["init", str(base), "-o", str(policy), "--quiet", "--no-fsync"])
        assert res.exit_code == 0, res.stderr
        adapter = _save_adapter(base, root / f"{arch}-rm", arch)
        out = root / f"{arch}-with-reward"
        res = runner.invoke(
            app, ["attach-reward-adapter", str(policy), str(adapter), "-o", str(out), "--json", "--no-fsync"]
        )
        assert res.exit_code == 0, res.stderr
        w[arch] = {"base": base, "policy": policy, "adapter": adapter, "out": out, "json": json.loads(res.stdout)}
    for bias in ("all", "lora_only"):
        adapter = _save_adapter(w["gpt2"]["base"], root / f"gpt2-rm-{bias}", "gpt2", bias=bias, seed=7)
        out = root / f"gpt2-with-reward-{bias}"
        res = runner.invoke(
            app, ["attach-reward-adapter", str(w["gpt2"]["policy"]), str(adapter), "-o", str(out), "--no-fsync"]
        )
        assert res.exit_code == 0, res.stderr
        w[f"gpt2-{bias}"] = {"base": w["gpt2"]["base"], "adapter": adapter, "out": out}
    return w


def _batch(padding: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of lengths 9, 5 and 2, padded on ``padding`` with PAD."""
    g = torch.Generator().manual_seed(seed)
    lengths = [9, 5, 2]
    ids = torch.full((3, 9), PAD, dtype=torch.long)
    mask = torch.zeros((3, 9), dtype=torch.long)
    for i, n in enumerate(lengths):
        row = torch.randint(3, 120, (n,), generator=g)
        sl = slice(0, n) if padding == "right" else slice(9 - n, 9)
        ids[i, sl] = row
        mask[i, sl] = 1
    return ids, mask


def _reference_rewards(base: Path, adapter: Path, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    seq_cls = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=PAD)
    ref = PeftModel.from_pretrained(seq_cls, adapter).eval()
    with torch.no_grad():
        return ref(input_ids=ids, attention_mask=mask).logits[:, 0]


def _load(path: Path, **kwargs: Any) -> Any:
    import vhtool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(path), **kwargs)


def _policy_lora(arch: str) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=POLICY_TARGETS[arch])


# --------------------------------------------------------------------------------------------- helpers
def test_sequence_rewards_reads_last_real_token_for_left_right_and_no_padding() -> None:
    from vhtool.models.reward import last_token_index, sequence_rewards

    scores = torch.arange(12, dtype=torch.float32).reshape(2, 6, 1)
    right = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 5]
    assert sequence_rewards(scores, right).tolist() == [2.0, 11.0]
    assert sequence_rewards(scores, left).tolist() == [5.0, 11.0]
    assert sequence_rewards(scores[..., 0]).tolist() == [5.0, 11.0]
    assert int(last_token_index(None, seq_len=6)) == 5
    # index -1 of a right-padded row is a padding token: the helper must not read it
    assert sequence_rewards(scores, right)[0] != scores[0, -1, 0]
    from vhtool.errors import InputError

    with pytest.raises(InputError, match="no tokens"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(InputError, match="labels"):
        sequence_rewards(torch.zeros(2, 3, 2), None)


# --------------------------------------------------------------------------------------------- attach (files)
def test_attach_writes_policy_adapter_and_manifest(world: dict[str, Any]) -> None:
    from safetensors import safe_open

    w = world["gpt2"]
    out: Path = w["out"]
    doc = json.loads((out / "vhtool.json").read_text())
    policy_doc = json.loads((w["policy"] / "vhtool.json").read_text())
    entry = doc["reward_adapter"]
    assert entry["name"] == entry["subfolder"] == "reward_model_adapter"
    assert entry["score_shape"] == [1, 32] and entry["peft_type"] == "LORA"
    assert entry["target_modules"] == sorted(TARGETS["gpt2"])
    assert entry["source"]["kind"] == "local"
    for key in ("value_head", "source", "role", "architecture", "layout"):
        assert doc[key] == policy_doc[key]  # the policy's manifest is kept
    sub = out / "reward_model_adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(entry["files"])
    for name, meta in entry["files"].items():
        import hashlib

        assert hashlib.sha256((sub / name).read_bytes()).hexdigest() == meta["sha256"]
        assert (sub / name).stat().st_size == meta["size"]
    assert (sub / "adapter_model.safetensors").read_bytes() == (
        w["adapter"] / "adapter_model.safetensors"
    ).read_bytes()
    assert (out / "model.safetensors").read_bytes() == (w["policy"] / "model.safetensors").read_bytes()
    assert doc["files"]["model.safetensors"]["sha256"] == policy_doc["files"]["model.safetensors"]["sha256"]
    assert not (out / "adapter_config.json").exists()  # OUT is not itself an adapter dir
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert "v_head.summary.weight" in set(fh.keys())
    js = w["json"]["reward_adapter"]
    assert js["adapted_modules"] == 6  # c_attn, attn.c_proj, mlp.c_proj x 2 layers and js["score_shape"] == [1, 32]


def test_attach_default_output_and_out_exists(
    world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world["llama"]
    monkeypatch.chdir(tmp_path)
    default = tmp_path / f"{w['policy'].name}-with-reward"  # in the current directory, not next to the policy
    res = cli("attach-reward-adapter", w["policy"], w["adapter"], "--quiet")
    assert res.exit_code == 0, res.stderr
    assert (default / "reward_model_adapter" / "adapter_model.safetensors").is_file()
    before = (default / "vhtool.json").read_bytes()
    res = cli("attach-reward-adapter", w["policy"], w["adapter"])
    assert res.exit_code == 2
    assert "already exists" in res.stderr and "--force" in res.stderr
    assert (default / "vhtool.json").read_bytes() == before
    res = cli("attach-reward-adapter", w["policy"], w["adapter"], "--force", "--adapter-name", "rm")
    assert res.exit_code == 0, res.stderr
    assert json.loads((default / "vhtool.json").read_text())["reward_adapter"]["subfolder"] == "rm"
    assert not (default / "reward_model_adapter").exists()


# --------------------------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_reward_equals_peft_sequence_classifier(world: dict[str, Any], arch: str, padding: str) -> None:
    from vhtool.models.reward import sequence_rewards

    w = world[arch]
    ids, mask = _batch(padding)
    want = _reference_rewards(w["base"], w["adapter"], ids, mask)
    model = _load(w["out"])
    assert model.supports_rm_adapter and model.rm_adapter_name == "reward_model_adapter"
    scores = model.compute_reward_score(ids, mask)
    assert scores.shape == (3, 9, 1) and not scores.requires_grad
    got = sequence_rewards(scores, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert want.abs().min() > 1e-3  # a real, non-trivial reward


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_adapter_trained_with_lora_bias_loads_and_scores(world: dict[str, Any], bias: str) -> None:
    from transformers import AutoModelForCausalLM

    from vhtool.models.reward import sequence_rewards

    w = world[f"gpt2-{bias}"]
    doc = json.loads((w["out"] / "vhtool.json").read_text())
    assert doc["reward_adapter"]["score_bias"] is False  # biases elsewhere are not the score head's
    ids, mask = _batch("right", seed=3)
    want = _reference_rewards(w["base"], w["adapter"], ids, mask)
    model = _load(w["out"]).eval()
    plain = AutoModelForCausalLM.from_pretrained(w["base"]).eval()
    with torch.no_grad():
        plain_logits = plain(input_ids=ids, attention_mask=mask).logits
        before = model(ids, attention_mask=mask)[0]
    got = sequence_rewards(model.compute_reward_score(ids, mask), mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        after = model(ids, attention_mask=mask)[0]
    # the trained biases were swapped in for scoring only: the policy is still the plain base
    torch.testing.assert_close(before, plain_logits, atol=0, rtol=0)
    torch.testing.assert_close(after, plain_logits, atol=0, rtol=0)


def test_scoring_leaves_plain_policy_forward_mode_and_state_unchanged(world: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    w = world["gpt2"]
    model = _load(w["out"])
    plain = AutoModelForCausalLM.from_pretrained(w["base"]).eval()
    assert type(model.pretrained_model) is type(plain)  # the wrapper holds the plain model, not a PeftModel
    assert not model.is_peft_model
    ids, mask = _batch("left", seed=5)
    model.eval()
    with torch.no_grad():
        logits0, _, value0 = model(ids, attention_mask=mask)
    torch.testing.assert_close(logits0, plain(input_ids=ids, attention_mask=mask).logits, atol=0, rtol=0)
    model.train()
    model.v_head.dropout.eval()  # a mixed mode must come back exactly as it was
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    model.compute_reward_score(ids, mask)
    assert model.training and model.pretrained_model.training and not model.v_head.dropout.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    model.eval()
    with torch.no_grad():
        logits1, _, value1 = model(ids, attention_mask=mask)
        gen = model.generate(ids[:1, -3:], max_new_tokens=4, do_sample=False, pad_token_id=PAD)
        gen_plain = plain.generate(ids[:1, -3:], max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    torch.testing.assert_close(logits1, logits0, atol=0, rtol=0)
    torch.testing.assert_close(value1, value0, atol=0, rtol=0)
    assert gen.tolist() == gen_plain.tolist()
    # state_dict stays the plain checkpoint's keys + the value head, and round-trips
    state = model.state_dict()
    assert set(state) == set(plain.state_dict()) | {"v_head.summary.weight", "v_head.summary.bias"}
    assert not any("lora" in k or "base_layer" in k for k in state)
    result = model.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(model.compute_reward_score(ids, mask), _load(w["out"]).compute_reward_score(ids, mask))


def test_policy_with_own_adapter_switches_scores_and_switches_back(world: dict[str, Any]) -> None:
    from peft import PeftModel

    from vhtool.models.reward import sequence_rewards

    w = world["llama"]
    ids, mask = _batch("right", seed=9)
    model = _load(w["out"], peft_config=_policy_lora("llama"))
    pm = model.pretrained_model
    assert isinstance(pm, PeftModel) and set(pm.peft_config) == {"default", "reward_model_adapter"}
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B.default" in name:
                p.normal_(0.0, 0.5)  # the policy's own adapter now changes its outputs
    pm.add_adapter("other", _policy_lora("llama"))
    model.eval()
    with torch.no_grad():
        base_logits = model(ids, attention_mask=mask)[0]
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert grads and not any(v for n, v in grads.items() if "reward_model_adapter" in n)
    assert any(v for n, v in grads.items() if "lora_A.default" in n)  # the policy adapter trains

    scores = model.compute_reward_score(ids, mask)
    assert pm.active_adapter == "default"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask)[0], base_logits, atol=0, rtol=0)
    want = _reference_rewards(w["base"], w["adapter"], ids, mask)
    torch.testing.assert_close(sequence_rewards(scores, mask), want, atol=1e-5, rtol=0)

    # ppo_adapter_name is honoured: scoring from "other" returns to "default" when asked
    pm.set_adapter("other")
    again = model.compute_reward_score(ids, mask, ppo_adapter_name="default")
    assert pm.active_adapter == "default"
    torch.testing.assert_close(again, scores, atol=0, rtol=0)
    pm.set_adapter("other")
    model.compute_reward_score(ids, mask)
    assert pm.active_adapter == "other"  # without it, whatever was active stays active
    from vhtool.errors import InputError

    with pytest.raises(InputError, match="not a policy adapter"):
        model.compute_reward_score(ids, mask, ppo_adapter_name="nope")
    assert pm.active_adapter == "other"


def test_save_pretrained_of_a_policy_with_reward_adapter_stays_sane(world: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    w = world["gpt2"]
    ids, mask = _batch("right", seed=21)
    model = _load(w["out"]).eval()
    model.save_pretrained(tmp_path / "plain")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    plain = AutoModelForCausalLM.from_pretrained(w["base"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, plain(input_ids=ids).logits, atol=0, rtol=0)
    reloaded = _load(tmp_path / "plain")
    assert reloaded.v_head_loaded
    torch.testing.assert_close(reloaded.v_head.summary.weight, model.v_head.summary.weight)
    # a PEFT policy saves its own adapter only, never a score-less copy of the reward adapter
    peft_policy = _load(w["out"], peft_config=_policy_lora("gpt2"))
    peft_policy.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "adapter_config.json").is_file()
    assert not (tmp_path / "peft" / "reward_model_adapter").exists()


def test_reward_adapter_kwarg_of_from_pretrained(world: dict[str, Any]) -> None:
    from vhtool.models.reward import sequence_rewards

    w = world["gpt2"]
    ids, mask = _batch("left", seed=11)
    model = _load(w["policy"], reward_adapter=str(w["adapter"]), reward_adapter_name="rm")
    assert model.rm_adapter_name == "rm" and model.v_head_loaded
    got = sequence_rewards(model.compute_reward_score(ids, mask), mask)
    torch.testing.assert_close(got, _reference_rewards(w["base"], w["adapter"], ids, mask), atol=1e-5, rtol=0)
    # a model without a reward adapter says so
    from vhtool.errors import InputError

    plain = _load(w["policy"])
    with pytest.raises(InputError, match="no reward adapter"):
        plain.compute_reward_score(ids, mask)


def test_api_refuses_adapter_without_score_head(world: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    from vhtool.errors import InputError
    from vhtool.models.reward import load_reward_adapter

    w = world["gpt2"]
    bad = _edit_adapter(w["adapter"], world["root"] / "api-no-score", drop="score")
    model = AutoModelForCausalLM.from_pretrained(w["base"])
    with pytest.raises(InputError, match='modules_to_save=\\["score"\\]'):
        load_reward_adapter(model, str(bad), adapter_name="rm")  # TRL: UnboundLocalError
    assert not any("lora" in n for n, _ in model.named_parameters())  # nothing half-loaded


def test_trl_loads_the_same_checkpoint_and_gives_the_same_token_scores(world: dict[str, Any]) -> None:
    from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlModel

    for arch in ("gpt2", "llama"):
        w = world[arch]
        ids, mask = _batch("right", seed=13)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trl_model = TrlModel.from_pretrained(
                str(w["out"]),
                peft_config=_policy_lora(arch),
                reward_adapter=str(w["out"] / "reward_model_adapter"),
            )
        trl_scores = trl_model.compute_reward_score(ids, mask)
        ours = _load(w["out"]).compute_reward_score(ids, mask)
        ours_peft = _load(w["out"], peft_config=_policy_lora(arch)).compute_reward_score(ids, mask)
        torch.testing.assert_close(ours, trl_scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours_peft, trl_scores, atol=1e-5, rtol=0)


def test_recorded_adapter_files_are_checked_on_load(world: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from vhtool.errors import CheckpointError

    out = tmp_path / "copy"
    shutil.copytree(world["gpt2"]["out"], out)
    cfg = out / "reward_model_adapter" / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace('"r": 4', '"r": 4 '))
    with pytest.raises(CheckpointError, match="sha256"):
        _load(out)
    shutil.rmtree(out / "reward_model_adapter")
    with pytest.raises(CheckpointError, match="missing"):
        _load(out)


# --------------------------------------------------------------------------------------------- bad input
def _assert_refused(res: Any, out: Path, *needles: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1
    for needle in needles:
        assert needle in res.stderr, res.stderr
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())


def test_refuses_adapter_without_score_head(world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path) -> None:
    bad = _edit_adapter(world["gpt2"]["adapter"], tmp_path / "no-score", drop="score")
    out = tmp_path / "out"
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], bad, "-o", out)
    _assert_refused(res, out, "no score head", 'modules_to_save=["score"]')


def test_refuses_two_label_head(world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path) -> None:
    bad = _save_adapter(world["gpt2"]["base"], tmp_path / "two", "gpt2", num_labels=2)
    out = tmp_path / "out"
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], bad, "-o", out)
    _assert_refused(res, out, "[2, 32]", "num_labels=1")


def test_refuses_adapter_for_another_architecture(
    world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], world["llama"]["adapter"], "-o", out)
    _assert_refused(res, out, "trained on a llama model", "gpt2")
    # base config unavailable: the module names still give it away
    moved = _edit_adapter(world["llama"]["adapter"], tmp_path / "moved", config={"base_model_name_or_path": "gone/x"})
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], moved, "-o", out)
    _assert_refused(res, out, "does not have", "another architecture")


def test_refuses_adapter_for_another_hidden_size(
    world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path
) -> None:
    base = tmp_path / "wide"
    build_tiny("gpt2", hidden=64).save_pretrained(base)
    bad = _save_adapter(base, tmp_path / "wide-rm", "gpt2")
    out = tmp_path / "out"
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], bad, "-o", out)
    _assert_refused(res, out, "hidden size 64", "hidden size 32")
    # without its score head's width to go by, the LoRA shapes still disagree
    no_cfg = _edit_adapter(bad, tmp_path / "wide-rm2", config={"base_model_name_or_path": "gone/x"})
    from vhtool.checkpoint.adapter import check_fit, inspect_adapter
    from vhtool.checkpoint.layout import open_checkpoint
    from vhtool.errors import InputError

    info = inspect_adapter(no_cfg)
    ckpt = open_checkpoint(world["gpt2"]["policy"])
    shapes = {n: loc.info.shape for n, loc in ckpt.tensors.items()}
    cfg = dict(ckpt.config, n_embd=64)  # pretend the widths agree: the LoRA A/B shapes must catch it
    with pytest.raises(InputError, match="features"):
        check_fit(info, shapes, cfg, where="the policy")


def test_refuses_directory_that_is_not_a_peft_adapter(
    world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], world["gpt2"]["base"], "-o", out)
    _assert_refused(res, out, "not a PEFT adapter directory", "adapter_config.json")
    no_type = _edit_adapter(world["gpt2"]["adapter"], tmp_path / "no-type", config={"peft_type": None})
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], no_type, "-o", out)
    _assert_refused(res, out, "no peft_type")


def test_refuses_pickle_adapter_unless_allowed(world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    from vhtool.models.reward import sequence_rewards

    src = world["gpt2"]["adapter"]
    pkl = tmp_path / "pkl"
    shutil.copytree(src, pkl)
    torch.save(load_file(str(pkl / "adapter_model.safetensors")), pkl / "adapter_model.bin")
    (pkl / "adapter_model.safetensors").unlink()
    out = tmp_path / "out"
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], pkl, "-o", out)
    _assert_refused(res, out, "pickle", "--allow-pickle")
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], pkl, "-o", out, "--allow-pickle")
    assert res.exit_code == 0, res.stderr
    assert not (out / "reward_model_adapter" / "adapter_model.bin").exists()
    ids, mask = _batch("right", seed=17)
    got = sequence_rewards(_load(out).compute_reward_score(ids, mask), mask)
    torch.testing.assert_close(got, _reference_rewards(world["gpt2"]["base"], src, ids, mask), atol=1e-5, rtol=0)


def test_refuses_policy_that_is_not_a_checkpoint(
    world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli("attach-reward-adapter", empty, world["gpt2"]["adapter"], "-o", out)
    _assert_refused(res, out, "not a checkpoint")
    res = cli("attach-reward-adapter", tmp_path / "missing", world["gpt2"]["adapter"], "-o", out)
    _assert_refused(res, out, "no such file")
    # a plain LM without a value head is not a policy checkpoint yet
    res = cli("attach-reward-adapter", world["gpt2"]["base"], world["gpt2"]["adapter"], "-o", out)
    _assert_refused(res, out, "not a value-head checkpoint", "vhtool init")


def test_offline_hub_adapter_is_a_clear_input_error(
    world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = cli("attach-reward-adapter", world["gpt2"]["policy"], "someone/reward-lora", "-o", out)
    _assert_refused(res, out, "cannot fetch the adapter", "hf download someone/reward-lora")


def test_cli_never_modifies_its_inputs(world: dict[str, Any], cli: Callable[..., Any], tmp_path: Path) -> None:
    import hashlib

    def tree(p: Path) -> dict[str, str]:
        return {str(f.relative_to(p)): hashlib.sha256(f.read_bytes()).hexdigest() for f in p.rglob("*") if f.is_file()}

    w = world["gpt2"]
    before = (tree(w["policy"]), tree(w["adapter"]), tree(w["out"]))
    res = cli("attach-reward-adapter", w["out"], w["adapter"], "-o", tmp_path / "again", "--link", "hardlink")
    assert res.exit_code == 0, res.stderr  # re-attaching to a checkpoint that has one replaces the entry
    assert "was replaced" in res.stderr
    _load(tmp_path / "again").compute_reward_score(*_batch("right"))
    assert (tree(w["policy"]), tree(w["adapter"]), tree(w["out"])) == before


def test_hub_adapter_and_hub_checkpoint(world: dict[str, Any], hub_server: Any, tmp_path: Path) -> None:
    """ADAPTER as a Hub id (private repo: the token must reach the download), and OUT loaded from the Hub."""
    from huggingface_hub import HfApi
    from typer.testing import CliRunner

    from vhtool.cli.app import app
    from vhtool.models.reward import sequence_rewards

    w = world["gpt2"]
    api = HfApi()
    api.create_repo("user/rm-lora", private=True)
    api.upload_folder(repo_id="user/rm-lora", folder_path=str(w["adapter"]))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["attach-reward-adapter", str(w["policy"]), "user/rm-lora", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    entry = json.loads((out / "vhtool.json").read_text())["reward_adapter"]
    assert entry["source"]["kind"] == "hub" and entry["source"]["model"] == "user/rm-lora"

    api.create_repo("user/policy-rm", private=True)
    api.upload_folder(repo_id="user/policy-rm", folder_path=str(out))
    ids, mask = _batch("left", seed=23)
    model = _load("user/policy-rm")
    assert model.rm_adapter_name == "reward_model_adapter"
    got = sequence_rewards(model.compute_reward_score(ids, mask), mask)
    torch.testing.assert_close(got, _reference_rewards(w["base"], w["adapter"], ids, mask), atol=1e-5, rtol=0)
    # and through reward_adapter= with a Hub id
    model = _load(w["policy"], reward_adapter="user/rm-lora")
    torch.testing.assert_close(sequence_rewards(model.compute_reward_score(ids, mask), mask), got, atol=1e-6, rtol=0)


def test_sharded_policy_with_symlinked_weights(
    world: dict[str, Any], saved_model: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """A sharded `init` output placed by symlink: the shards are linked again, the index copied, scoring works."""
    from vhtool.models.reward import sequence_rewards

    base = saved_model("gpt2", sharded=True)
    policy = tmp_path / "policy"
    assert cli("init", base, "-o", policy, "--link", "symlink", "--no-fsync", "--quiet").exit_code == 0
    out = tmp_path / "out"
    res = cli("attach-reward-adapter", policy, world["gpt2"]["adapter"], "-o", out, "--link", "symlink", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert {f["how"] for f in doc["files"]} == {"symlink"}
    assert (out / "model.safetensors.index.json").read_text() == (policy / "model.safetensors.index.json").read_text()
    res = cli(
        "attach-reward-adapter",
        policy,
        world["gpt2"]["adapter"],
        "-o",
        tmp_path / "x",
        "--adapter-name",
        "config.json",
    )
    _assert_refused(res, tmp_path / "x", "config.json")
    # same base weights as world["gpt2"] (build_tiny is seeded), so the same reference applies
    ids, mask = _batch("left", seed=29)
    got = sequence_rewards(_load(out).compute_reward_score(ids, mask), mask)
    want = _reference_rewards(world["gpt2"]["base"], world["gpt2"]["adapter"], ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_file_world_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, vhtool.checkpoint.adapter, vhtool.checkpoint.attach_op, vhtool.cli.attach_cmd; "
        "print('torch' in sys.modules, 'peft' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
