"""Checkpoints from training (``save_pretrained``, no vhtool.json) are first-class: verify, push, adopt.

Also the critic rule of ``convert --to seq-cls`` (an untrained random bias is dropped) and that every command
an error message suggests works when executed as written.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.hub_fixtures import HubServer

KINDS = ("vh_single", "trl_single", "trl_sharded", "vh_peft", "vh_peft_010", "trl_peft")


def _trl() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead

    return AutoModelForCausalLMWithValueHead


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders as save_pretrained writes them after training: vhtool's and TRL's, single, sharded, PEFT."""
    import torch
    from peft import LoraConfig

    import vhtool
    from vhtool.builtin import builtin_path

    base = tmp_path_factory.mktemp("saved")
    src = str(builtin_path("tiny-llama"))
    out: dict[str, Path] = {k: base / k for k in KINDS}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(src).save_pretrained(out["vh_single"])
        trl = _trl().from_pretrained(src)
        trl.save_pretrained(out["trl_single"])
        trl.save_pretrained(out["trl_sharded"], max_shard_size="100KB")
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(src, peft_config=lora).save_pretrained(out["vh_peft"])
        out["trl_peft"].mkdir()  # TRL 1.12.0 torch.saves the head before PEFT creates the folder
        _trl().from_pretrained(src, peft_config=lora).save_pretrained(out["trl_peft"])
    # vhtool 0.1.0 wrote a PEFT policy's head as value_head.safetensors
    p010 = out["vh_peft_010"]
    p010.mkdir()
    for f in out["vh_peft"].iterdir():
        target = p010 / ("value_head.safetensors" if f.name == "model.safetensors" else f.name)
        target.write_bytes(f.read_bytes())
    assert (out["trl_sharded"] / "model.safetensors.index.json").is_file()
    assert (out["trl_peft"] / "pytorch_model.bin").is_file()
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")}


def _head(path: Path) -> dict[str, bytes]:
    """The v_head tensors' bytes wherever the checkpoint keeps them."""
    from safetensors import safe_open

    heads = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                if k.startswith("v_head."):
                    heads[k] = st.get_tensor(k).tobytes()
    return heads


@pytest.mark.parametrize("kind", KINDS)
def test_verify_without_manifest(saved: dict[str, Path], cli: Callable[..., Any], kind: str) -> None:
    args = ["--allow-pickle"] if kind == "trl_peft" else []
    res = cli("verify", saved[kind], "--json", *args)
    assert res.exit_code == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["manifest"]["ok"] and checks["manifest"]["detail"].startswith("none")
    assert "finite" in checks["value_head"]["detail"] and doc["manifest"] is False
    assert doc["kind"] == ("peft-folder" if "peft" in kind else "checkpoint")
    assert any("not checked" in n for n in doc["notes"])


def test_trl_pickled_head_needs_allow_pickle(saved: dict[str, Path], cli: Callable[..., Any]) -> None:
    res = cli("verify", saved["trl_peft"])
    assert res.exit_code == 1 and "--allow-pickle" in res.stderr
    # the suggested flag works
    assert cli("verify", saved["trl_peft"], "--allow-pickle").exit_code == 0


@pytest.mark.parametrize("kind", KINDS)
def test_push_without_manifest(
    saved: dict[str, Path], cli: Callable[..., Any], hub_server: HubServer, kind: str
) -> None:
    import torch

    import vhtool

    folder = saved[kind]
    before = _digest(folder)
    repo = f"user/{kind.replace('_', '-')}"
    args = ["--allow-pickle"] if kind == "trl_peft" else []
    res = cli("push", folder, repo, "--json", *args)
    assert res.exit_code == 0, res.stderr
    assert _digest(folder) == before  # nothing written into the user's folder
    commits = hub_server.commits(repo)
    assert len(commits) == 2  # the repo's initial commit, then everything in one
    manifest = json.loads(hub_server.file_bytes(repo, "vhtool.json"))
    assert manifest["adopted"]["by"] == "vhtool push" and manifest["role"] == "policy"
    assert manifest["adopted"]["kind"] == ("peft" if "peft" in kind else "save_pretrained")
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(hub_server.file_bytes(repo, name)).hexdigest() == entry["sha256"], name
    assert "README.md" in json.loads(res.stdout)["uploaded"]
    if "peft" in kind:
        assert not any(n.endswith(".bin") for n in json.loads(res.stdout)["uploaded"])
        loaded = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(repo)
        local_head = (
            torch.load(folder / "pytorch_model.bin", weights_only=True)
            if kind == "trl_peft"
            else vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(folder)).v_head.state_dict()
        )
        weight = local_head.get("v_head.summary.weight", local_head.get("summary.weight"))
        assert torch.equal(loaded.v_head.summary.weight.detach(), weight)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trl_loaded = _trl().from_pretrained(repo)
        assert torch.equal(trl_loaded.v_head.summary.weight.detach(), weight)


@pytest.mark.parametrize("kind", ["vh_single", "trl_single", "trl_sharded"])
def test_adoption_keeps_the_head_bit_for_bit(
    saved: dict[str, Path], cli: Callable[..., Any], tmp_path: Path, kind: str
) -> None:
    src = saved[kind]
    before = _digest(src)
    out = tmp_path / "adopted"
    res = cli("convert", src, "--to", "vhtool", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["adopted"] is True
    assert _digest(src) == before
    weights = sorted(p.name for p in src.glob("*.safetensors"))
    for name in weights:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert _head(out) == _head(src) and _head(out)
    manifest = json.loads((out / "vhtool.json").read_text())
    assert manifest["adopted"] == {
        "by": "vhtool convert",
        "head_file": manifest["value_head"]["file"],
        "kind": "save_pretrained",
        "path": str(src.resolve()),
    }
    assert sorted(manifest["files"]) == weights and all(e["sha256"] for e in manifest["files"].values())
    res = cli("verify", out, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["manifest"] is True
    # adopted once: converting it to vhtool again has nothing to do
    assert cli("convert", out, "--to", "vhtool", "-o", tmp_path / "again").exit_code == 2


# ----------------------------------------------------------------------------- suggestions, executed


def _suggested(message: str) -> list[list[str]]:
    """Every `vhtool ...` command quoted in backticks in ``message``, split as a shell would."""
    return [shlex.split(m)[1:] for m in re.findall(r"`(vhtool [^`]+)`", message)]


def test_init_on_a_trained_checkpoint_suggests_adoption_that_works(
    saved: dict[str, Path], cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    src = saved["trl_single"]
    res = cli("init", src, "-o", "out")
    assert res.exit_code == 2
    message = " ".join(res.stderr.split())  # rich may wrap the line
    commands = _suggested(message)
    assert [c[0] for c in commands] == ["convert", "init"], message
    assert commands[0] == ["convert", str(src), "--to", "vhtool", "-o", "out"]
    res = cli(*commands[0])
    assert res.exit_code == 0, res.stderr
    assert _head(tmp_path / "out") == _head(src)  # the trained head, kept
    # the other suggestion, --reinit-head, is the alternative: a fresh head (run where "out" is still free)
    assert "--reinit-head" in commands[1] and "--force" not in commands[1]
    (tmp_path / "alt").mkdir()
    monkeypatch.chdir(tmp_path / "alt")
    res = cli(*commands[1])
    assert res.exit_code == 0, res.stderr
    assert _head(tmp_path / "alt" / "out") != _head(src) and _head(tmp_path / "out") == _head(src)


def test_init_on_a_vhtool_policy_suggests_reinit_head(cli: Callable[..., Any], tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    assert cli("init", "builtin:tiny-gpt2", "-o", policy, "-q").exit_code == 0
    res = cli("init", policy, "-o", tmp_path / "again")
    assert res.exit_code == 2
    (command,) = _suggested(" ".join(res.stderr.split()))
    assert command[0] == "init" and "--reinit-head" in command and "--force" not in command
    assert cli(*command).exit_code == 0


def test_verify_suggestions_work(saved: dict[str, Path], cli: Callable[..., Any], tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    # a plain model: verify suggests init, which adds a head
    plain = tmp_path / "plain"
    plain.mkdir()
    from vhtool.builtin import builtin_path

    for f in builtin_path("tiny-gpt2").iterdir():
        (plain / f.name).write_bytes(f.read_bytes())
    res = cli("verify", plain, "--json")
    assert res.exit_code == 1
    detail = next(c["detail"] for c in json.loads(res.stdout)["checks"] if c["name"] == "value_head")
    (command,) = _suggested(detail)
    assert cli(*command, "-q").exit_code == 0
    assert cli("verify", command[command.index("-o") + 1], "-q").exit_code == 0

    # a NaN head: verify suggests init --reinit-head into a new folder, which verifies
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in saved["trl_single"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["v_head.summary.weight"] = np.full_like(tensors["v_head.summary.weight"], np.nan)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    res = cli("verify", broken, "--json")
    detail = next(c["detail"] for c in json.loads(res.stdout)["checks"] if c["name"] == "value_head")
    (command,) = _suggested(detail)
    assert "--reinit-head" in command and "--force" not in command
    assert cli(*command, "-q").exit_code == 0, command
    assert cli("verify", command[command.index("-o") + 1], "-q").exit_code == 0

    # no manifest: the note's adoption command works
    res = cli("verify", saved["vh_single"], "--json")
    note = next(n for n in json.loads(res.stdout)["notes"] if "adopts" in n)
    (command,) = _suggested(note)
    command[command.index("-o") + 1] = str(tmp_path / "adopted")
    assert cli(*command, "-q").exit_code == 0


def test_push_refusal_names_a_working_command(
    saved: dict[str, Path], cli: Callable[..., Any], hub_server: HubServer
) -> None:
    res = cli("push", saved["trl_peft"], "user/pickled")
    assert res.exit_code == 1 and "--allow-pickle" in res.stderr
    assert "user/pickled" not in hub_server.repos
    assert cli("push", saved["trl_peft"], "user/pickled", "--allow-pickle", "-q").exit_code == 0


# ----------------------------------------------------------------------------- critics from the default init


def test_critic_from_default_init(cli: Callable[..., Any], tmp_path: Path) -> None:
    policy, critic = tmp_path / "policy", tmp_path / "critic"
    assert cli("init", "builtin:tiny-llama", "-o", policy, "-q").exit_code == 0
    res = cli("convert", policy, "--to", "seq-cls", "-o", critic)
    assert res.exit_code == 0, res.stderr
    assert "untrained random bias" in " ".join(res.stderr.split())
    manifest = json.loads((critic / "vhtool.json").read_text())
    assert manifest["role"] == "critic"
    (dropped,) = manifest["conversion"]["dropped_untrained"]
    assert dropped.startswith("v_head.summary.bias") and dropped not in manifest["conversion"].get("lost", [])
    assert cli("verify", critic, "-q").exit_code == 0


def test_trained_head_bias_still_needs_allow_lossy_and_the_suggestions_work(
    cli: Callable[..., Any], tmp_path: Path
) -> None:
    import torch

    import vhtool

    policy = tmp_path / "policy"
    assert cli("init", "builtin:tiny-llama", "-o", policy, "-q").exit_code == 0
    # "training": the head changes and save_pretrained writes into the folder (vhtool.json refreshed, no sha256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(policy))
    with torch.no_grad():
        model.v_head.summary.weight.add_(0.01)
    model.save_pretrained(policy)
    out = tmp_path / "critic"
    res = cli("convert", policy, "--to", "seq-cls", "-o", out)
    assert res.exit_code == 2 and not out.exists()
    commands = _suggested(" ".join(res.stderr.split()))
    assert [c[c.index("--to") + 1] for c in commands] == ["token-cls", "seq-cls"]
    assert "--allow-lossy" in commands[1]
    res = cli(*commands[0])  # token-cls keeps the bias
    assert res.exit_code == 0, res.stderr
    assert "score.bias" in _head_names(out)
    shutil.rmtree(out)
    res = cli(*commands[1])  # seq-cls with --allow-lossy drops it, recorded as lost
    assert res.exit_code == 0, res.stderr
    lost = json.loads((out / "vhtool.json").read_text())["conversion"]["lost"]
    assert any(x.startswith("v_head.summary.bias") for x in lost)


def _head_names(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "np") as st:
        return set(st.keys())
