"""`vhtool make-reference` and `load_policy_and_reference`: a pair that truly shares layers, and refuses drift."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import vhtool
from tests.helpers import SEQ2SEQ_ARCHS, VOCAB

CONTAINERS = {
    "gpt2": "transformer.h",
    "llama": "model.layers",
    "opt": "model.decoder.layers",
    "gpt-neox": "gpt_neox.layers",
    "t5": "encoder.block",
}


def run_forward(model: Any, arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = (torch.arange(2 * 6).reshape(2, 6) * 7 + 3) % VOCAB
    kw = {"decoder_input_ids": ids[:, :3]} if arch in SEQ2SEQ_ARCHS else {}
    with torch.no_grad():
        logits, _, value = model(input_ids=ids, **kw)
    return logits, value


@pytest.fixture
def policy_of(saved_model: Any, cli: Any, tmp_path: Path) -> Any:
    def make(arch: str) -> Path:
        out = tmp_path / f"{arch}-policy"
        assert cli("init", saved_model(arch), "-o", out, "--v-head-init", "normal").exit_code == 0
        return out

    return make


@pytest.mark.parametrize("arch", list(CONTAINERS))
def test_pair_shares_exactly_the_recorded_tensors(arch: str, policy_of: Any, cli: Any, tmp_path: Path) -> None:
    policy_dir = policy_of(arch)
    ref_dir = tmp_path / "ref"
    res = cli("make-reference", policy_dir, "--shared-layers", "1", "-o", ref_dir, "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads((ref_dir / "vhtool.json").read_text())["reference"]
    assert info["shared_layers"] == 1 and info["num_blocks"] == 2
    assert info["pattern"] == CONTAINERS[arch] + ".{layer}"
    recorded = set(info["shared_tensors"])
    assert any(f"{CONTAINERS[arch]}.0." in n for n in recorded)
    assert not any(f"{CONTAINERS[arch]}.1." in n for n in recorded)

    policy, ref = vhtool.load_policy_and_reference(policy_dir, ref_dir)
    policy.eval()
    pol = dict(policy.named_parameters())
    for name, p in ref.named_parameters():
        tensor = name.removeprefix("pretrained_model.")
        if tensor in recorded:
            assert p is pol[name] and p.data_ptr() == pol[name].data_ptr()
            assert not p.requires_grad and not pol[name].requires_grad
        else:
            assert p.data_ptr() != pol[name].data_ptr(), name
            assert not p.requires_grad
    # the file-level choice agrees with the in-memory create_reference_model
    in_memory = vhtool.create_reference_model(policy, num_shared_layers=1)
    assert {n.removeprefix("pretrained_model.") for n in in_memory.shared_parameter_names} == recorded

    before_ref = run_forward(ref, arch)
    assert all(torch.equal(a, b) for a, b in zip(before_ref, run_forward(policy, arch)))
    shared_before = {n: pol[f"pretrained_model.{n}"].detach().clone() for n in recorded}
    policy.train()
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    ids = torch.arange(12).reshape(2, 6) % VOCAB
    kw = {"decoder_input_ids": ids[:, :3]} if arch in SEQ2SEQ_ARCHS else {}
    logits, _, value = policy(input_ids=ids, **kw)
    (logits.mean() + value.mean()).backward()
    opt.step()
    policy.eval()
    assert all(torch.equal(a, b) for a, b in zip(before_ref, run_forward(ref, arch)))
    assert all(torch.equal(pol[f"pretrained_model.{n}"], v) for n, v in shared_before.items())
    assert not torch.equal(run_forward(policy, arch)[1], before_ref[1])


def test_full_copy_without_shared_layers(policy_of: Any, cli: Any, tmp_path: Path) -> None:
    policy_dir = policy_of("gpt2")
    assert cli("make-reference", policy_dir, "-o", tmp_path / "ref").exit_code == 0
    info = json.loads((tmp_path / "ref" / "vhtool.json").read_text())["reference"]
    assert info["shared_layers"] is None and info["shared_tensors"] == []
    policy, ref = vhtool.load_policy_and_reference(policy_dir, tmp_path / "ref")
    pol = dict(policy.named_parameters())
    assert all(p.data_ptr() != pol[n].data_ptr() for n, p in ref.named_parameters())
    assert all(p.requires_grad for p in policy.parameters())


def test_reference_records_policy_files_and_loads_on_its_own(policy_of: Any, cli: Any, tmp_path: Path) -> None:
    policy_dir = policy_of("llama")
    assert cli("make-reference", policy_dir, "--shared-layers", "2", "-o", tmp_path / "ref").exit_code == 0
    manifest = json.loads((tmp_path / "ref" / "vhtool.json").read_text())
    pol_manifest = json.loads((policy_dir / "vhtool.json").read_text())
    assert manifest["role"] == "reference"
    assert manifest["reference"]["policy"]["files"] == {k: v["sha256"] for k, v in pol_manifest["files"].items()}
    alone = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "ref"))
    policy = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(policy_dir))
    assert all(
        torch.equal(a, b) for a, b in zip(run_forward(alone.eval(), "llama"), run_forward(policy.eval(), "llama"))
    )


def test_default_output_and_policy_from_current_directory(
    policy_of: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_dir = policy_of("gpt2")
    monkeypatch.chdir(policy_dir)
    res = cli("make-reference", "--shared-layers", "1")
    assert res.exit_code == 0, res.stderr
    assert (policy_dir.parent / f"{policy_dir.name}-reference" / "vhtool.json").is_file()


def test_drifted_policy_is_refused(policy_of: Any, cli: Any, tmp_path: Path) -> None:
    policy_dir = policy_of("gpt2")
    assert cli("make-reference", policy_dir, "--shared-layers", "1", "-o", tmp_path / "ref").exit_code == 0
    # the policy keeps training after the reference was made: its block 0 changes
    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(policy_dir))
    with torch.no_grad():
        model.pretrained_model.transformer.h[0].mlp.c_fc.weight.add_(0.01)
    shutil.rmtree(policy_dir)
    model.save_pretrained(policy_dir)
    with pytest.raises(vhtool.errors.InputError, match="changed after `vhtool make-reference`"):
        vhtool.load_policy_and_reference(policy_dir, tmp_path / "ref")


def test_changes_outside_the_shared_layers_are_fine(policy_of: Any, cli: Any, tmp_path: Path) -> None:
    policy_dir = policy_of("gpt2")
    assert cli("make-reference", policy_dir, "--shared-layers", "1", "-o", tmp_path / "ref").exit_code == 0
    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(policy_dir))
    with torch.no_grad():
        model.pretrained_model.transformer.h[1].mlp.c_fc.weight.add_(0.01)
    shutil.rmtree(policy_dir)
    model.save_pretrained(policy_dir)
    policy, ref = vhtool.load_policy_and_reference(policy_dir, tmp_path / "ref")
    assert not torch.equal(
        ref.pretrained_model.transformer.h[1].mlp.c_fc.weight, policy.pretrained_model.transformer.h[1].mlp.c_fc.weight
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shared-layers", "-1"], "out of range: found 2 blocks (transformer.h.{layer})"),
        (["--shared-layers", "3"], "out of range: found 2 blocks (transformer.h.{layer})"),
        (["--shared-layers", "1", "--pattern", "transformer.hh.{layer}"], "matches no tensor"),
        (["--shared-layers", "1", "--pattern", "transformer.h"], "must contain '{layer}'"),
    ],
)
def test_bad_arguments(args: list[str], message: str, policy_of: Any, cli: Any, tmp_path: Path) -> None:
    res = cli("make-reference", policy_of("gpt2"), *args, "-o", tmp_path / "ref")
    assert res.exit_code == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "ref").exists()


def test_bad_inputs(policy_of: Any, cli: Any, tmp_path: Path) -> None:
    policy_dir = policy_of("gpt2")
    (tmp_path / "empty").mkdir()
    res = cli("make-reference", tmp_path / "empty", "--shared-layers", "1", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "not a checkpoint" in res.stderr
    assert cli("make-reference", policy_dir, "--shared-layers", "1", "-o", tmp_path / "ref").exit_code == 0
    res = cli("make-reference", policy_dir, "--shared-layers", "1", "-o", tmp_path / "ref")
    assert res.exit_code == 2 and "already exists" in res.stderr
    res = cli("make-reference", tmp_path / "ref", "--shared-layers", "1", "-o", tmp_path / "ref2")
    assert res.exit_code == 2 and "is a reference checkpoint" in res.stderr
    assert not (tmp_path / "ref2").exists() and not (tmp_path / "x").exists()
    with pytest.raises(vhtool.errors.InputError, match="not a vhtool reference"):
        vhtool.load_policy_and_reference(policy_dir, policy_dir)
