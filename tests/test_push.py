"""``vhtool push`` against the loopback Hub server (tests/hub_server.py): real huggingface_hub calls, no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import json_error
from tests.hub_fixtures import HubServer

REPO = "user/tiny-policy"
VHTOOL = str(Path(sys.executable).with_name("vhtool"))


@pytest.fixture(scope="module")
def ckpts(initialised: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints made by init: single-file (seeds 0 and 1), sharded (--link hardlink), with a reward adapter."""
    base = tmp_path_factory.mktemp("push")
    out = {
        "policy": initialised("builtin:tiny-gpt2"),
        "policy_seed1": initialised("builtin:tiny-gpt2", seed=1),
        "sharded": initialised("builtin:tiny-gpt2", link="hardlink"),
    }
    out["adapter"] = _make_reward_adapter(base / "adapter")
    from vhtool.checkpoint.attach_op import attach_reward_adapter

    attach_reward_adapter(out["policy"], out["adapter"], base / "with-reward", durable=False)
    out["with_reward"] = base / "with-reward"
    return out


def _make_reward_adapter(out: Path) -> Path:
    """A real PEFT LoRA SEQ_CLS adapter (score head saved) on the built-in tiny GPT-2."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from vhtool.hub import resolve_source

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        str(resolve_source("builtin:tiny-gpt2").path), num_labels=1
    )
    peft = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["c_attn"]))
    peft.save_pretrained(str(out))
    return out


def _tree_digest(root: Path) -> dict[str, tuple[int, str, float]]:
    """Every file under ``root`` with size, sha256 and mtime (to prove the input is never modified)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _local_files(root: Path) -> dict[str, bytes]:
    """The files a push publishes: all but dotfiles and vhtool's built-in marker (never published)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.name != "builtin.json"
    }


def _assert_on_hub(hub_server: HubServer, repo: str, root: Path, revision: str = "main") -> None:
    """Every file ``root`` publishes is on the Hub byte for byte; ``vhtool.json`` adds only ``published``.

    ``published`` lists every path this push published (the card included), which is what the remote holds
    besides ``.gitattributes`` after a push to a fresh repo.
    """
    for name, data in _local_files(root).items():
        remote = hub_server.file_bytes(repo, name, revision)
        if name != "vhtool.json":
            assert remote == data, name
            continue
        doc = json.loads(remote)
        published = doc.pop("published")
        assert doc == json.loads(data)
        assert published == sorted(published) and set(_local_files(root)) <= set(published)
        assert set(published) <= set(hub_server.list_files(repo, revision))


def _push(cli: Callable[..., Any], *args: Any) -> Any:
    result = cli("push", *args)
    return result


def _json(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# ------------------------------------------------------------------------------------------------ the happy path


def test_push_init_checkpoint_byte_identical_then_noop_then_one_change(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    policy = ckpts["policy"]
    before = _tree_digest(policy)
    doc = _json(_push(cli, policy, REPO, "--json"))
    assert doc["pushed"] is True and doc["repo_created"] is True and doc["model_card"] == "generated"
    commits = hub_server.commits(REPO)
    assert [c.title for c in commits][0] == "initial commit" and len(commits) == 2
    assert doc["commit"]["oid"] == commits[-1].id == hub_server.repo(REPO).branches["main"]
    local = _local_files(policy)
    assert sorted(doc["uploaded"]) == sorted([*local, "README.md"]) and doc["unchanged"] == []
    sizes = {f["path"]: f["size"] for f in doc["files"]}
    assert doc["bytes_uploaded"] == sum(sizes.values())
    assert sizes.keys() == {*local, "README.md"}
    _assert_on_hub(hub_server, REPO, policy)
    published = json.loads(hub_server.file_bytes(REPO, "vhtool.json"))["published"]
    assert published == sorted([*local, "README.md"])  # what the next push may delete, and nothing else
    assert hub_server.file_entry(REPO, "model.safetensors").lfs
    card = hub_server.file_bytes(REPO, "README.md").decode()
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- vhtool\n- value-head\n- rlhf\n- trl\n---\n")
    assert "base_model" not in card  # a built-in source is not a Hub id
    assert f'AutoModelForCausalLMWithValueHead.from_pretrained("{REPO}")' in card
    assert "initialised `random`, initializer range 0.2, seed 0" in card
    assert len(hub_server.lfs_upload_requests) == 1
    assert _tree_digest(policy) == before  # the input is never modified (no README.md written into it)

    # Same checkpoint again: no commit, no upload, and it says so.
    hub_server.clear_requests()
    again = _push(cli, policy, REPO)
    assert again.exit_code == 0, again.stderr
    assert "Nothing to push, remote is up to date" in again.stdout
    assert len(hub_server.commits(REPO)) == 2
    assert not hub_server.find_requests("POST", "/commit/") and not hub_server.lfs_upload_requests
    assert not hub_server.find_requests("POST", "/api/repos/create")
    doc = _json(_push(cli, policy, REPO, "--json"))
    assert doc["pushed"] is False and doc["commit"] is None and doc["nothing_to_push"] is True
    assert doc["uploaded"] == [] and sorted(doc["unchanged"]) == sorted([*local, "README.md"])

    # Only config.json edited (it is not a hashed weight file): only it is committed, no LFS upload.
    edited = policy.parent / "policy-edited"
    shutil.copytree(policy, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["vhtool_test_note"] = "edited"
    (edited / "config.json").write_text(json.dumps(cfg, indent=2))
    hub_server.clear_requests()
    doc = _json(_push(cli, edited, REPO, "--json"))
    assert doc["pushed"] is True and doc["uploaded"] == ["config.json"]
    assert hub_server.commits(REPO)[-1].files_changed == ("config.json",)
    assert not hub_server.lfs_upload_requests
    assert hub_server.file_bytes(REPO, "config.json") == (edited / "config.json").read_bytes()

    # A new value head (re-init with another seed): the weight file is the only LFS upload.
    hub_server.clear_requests()
    doc = _json(_push(cli, ckpts["policy_seed1"], REPO, "--json", "--commit-message", "seed 1"))
    assert sorted(doc["uploaded"]) == ["README.md", "config.json", "model.safetensors", "vhtool.json"]
    assert "tokenizer.json" in doc["unchanged"]
    last = hub_server.commits(REPO)[-1]
    assert last.title == "seed 1" and set(last.files_changed) == set(doc["uploaded"])
    (upload,) = hub_server.lfs_upload_requests
    assert upload.body_size == (ckpts["policy_seed1"] / "model.safetensors").stat().st_size
    assert (
        hub_server.file_bytes(REPO, "model.safetensors") == (ckpts["policy_seed1"] / "model.safetensors").read_bytes()
    )


def test_pushed_repo_loads_back_with_vhtool_identical_outputs(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    import torch

    import vhtool

    assert _push(cli, ckpts["policy"], REPO, "-q").exit_code == 0
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    local = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpts["policy"])).eval()
    remote = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(REPO).eval()
    assert hub_server.find_requests("GET", f"/{REPO}/resolve/")  # really read through HF_ENDPOINT
    with torch.no_grad():
        a, b = local(ids), remote(ids)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert torch.equal(local.v_head.summary.weight, remote.v_head.summary.weight)


def test_sharded_push_loads_in_trl_and_inspect_reads_headers(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    import torch
    from safetensors.torch import load_file
    from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlValueHead

    sharded = ckpts["sharded"]
    assert (sharded / "model.safetensors.index.json").is_file()
    doc = _json(_push(cli, sharded, "user/sharded", "--json"))
    assert "model.safetensors.index.json" in doc["uploaded"]
    _assert_on_hub(hub_server, "user/sharded", sharded)

    local_head = load_file(str(sharded / "model-value-head.safetensors"))
    model = TrlValueHead.from_pretrained("user/sharded")
    assert torch.equal(model.v_head.summary.weight.detach(), local_head["v_head.summary.weight"])
    assert torch.equal(model.v_head.summary.bias.detach(), local_head["v_head.summary.bias"])
    # TRL probes for model.safetensors first: the server answered 404 the Hub way and TRL fell back to the index.
    missing = hub_server.find_requests(path_contains="/resolve/", status=404)
    assert missing, "TRL's fallbacks should have probed for files the repo does not have"

    hub_server.clear_requests()
    res = cli("inspect-layers", "user/sharded", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert "v_head.summary.weight" in json.dumps(report)
    ranged = [r for r in hub_server.requests if "range" in r.headers and "/resolve/" in r.decoded_path]
    assert ranged, "inspect-layers should read the headers with range requests"
    assert not [r for r in hub_server.lfs_upload_requests]


def test_push_with_reward_adapter_subfolder(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    ckpt = ckpts["with_reward"]
    doc = _json(_push(cli, ckpt, "user/with-reward", "--json", "--private"))
    assert hub_server.repo("user/with-reward").private
    sub = [p for p in doc["uploaded"] if p.startswith("reward_model_adapter/")]
    assert sorted(sub) == [
        "reward_model_adapter/README.md",  # PEFT's own adapter card, part of the adapter folder
        "reward_model_adapter/adapter_config.json",
        "reward_model_adapter/adapter_model.safetensors",
    ]
    _assert_on_hub(hub_server, "user/with-reward", ckpt)
    card = hub_server.file_bytes("user/with-reward", "README.md").decode()
    assert "Reward adapter: PEFT LORA adapter `reward_model_adapter` in the subfolder `reward_model_adapter/`" in card
    assert len(hub_server.commits("user/with-reward")) == 2  # everything in one commit


def test_dry_run_changes_nothing_and_compares_with_remote(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    doc = _json(_push(cli, ckpts["policy"], REPO, "--dry-run", "--json"))
    assert doc["dry_run"] is True and doc["remote"]["checked"] is True and doc["remote"]["exists"] is False
    assert {f["status"] for f in doc["files"]} == {"added"}
    assert doc["bytes_to_upload"] == sum(f["size"] for f in doc["files"])
    assert REPO not in hub_server.repos
    assert not hub_server.find_requests("POST") and not hub_server.find_requests("PUT")

    assert _push(cli, ckpts["policy"], REPO, "-q").exit_code == 0
    n_commits = len(hub_server.commits(REPO))
    hub_server.clear_requests()
    res = _push(cli, ckpts["policy_seed1"], REPO, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "changed   model.safetensors" in res.stdout and "unchanged tokenizer.json" in res.stdout
    doc = _json(_push(cli, ckpts["policy_seed1"], REPO, "--dry-run", "--json"))
    status = {f["path"]: f["status"] for f in doc["files"]}
    assert status["model.safetensors"] == "changed" and status["tokenizer.json"] == "unchanged"
    assert doc["bytes_to_upload"] == sum(f["size"] for f in doc["files"] if f["status"] == "changed")
    assert len(hub_server.commits(REPO)) == n_commits
    assert not hub_server.find_requests("POST") and not hub_server.find_requests("PUT")
    assert not hub_server.find_requests("DELETE")


def test_dry_run_offline_says_remote_not_checked(cli: Callable[..., Any], ckpts: dict[str, Path]) -> None:
    # The autouse environment is offline (HF_HUB_OFFLINE=1) and has no token.
    doc = _json(_push(cli, ckpts["policy"], REPO, "--dry-run", "--json"))
    assert doc["remote"]["checked"] is False and "remote not checked" in doc["remote"]["note"]
    assert {f["status"] for f in doc["files"]} == {"not checked"}  # never "added": nothing was compared
    assert "no token found: the remote was not read" in " ".join(doc["notes"])


def test_push_while_offline_exit_2(
    cli: Callable[..., Any], ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline mode is a setting: exit 2, as for every command that reads the Hub (issue 20, point 10)."""
    monkeypatch.setenv("HF_TOKEN", "hf_unused_token_for_this_test")
    res = _push(cli, ckpts["policy"], REPO)
    assert res.exit_code == 2 and "HF_HUB_OFFLINE is set; unset it to push" in res.stderr and res.stdout == ""
    res = _push(cli, ckpts["policy"], REPO, "--json")
    assert json_error(res.stdout, 2)["type"] == "HubUnavailableError"


def test_symlinked_weights_recorded_in_vhtool_json_are_pushed(
    hub_server: HubServer, cli: Callable[..., Any], initialised: Callable[..., Path]
) -> None:
    ckpt = initialised("builtin:tiny-gpt2", link="symlink")
    assert (ckpt / "model-00001-of-00001.safetensors").is_symlink()
    doc = _json(_push(cli, ckpt, REPO, "--json"))
    assert "model-00001-of-00001.safetensors" in doc["uploaded"]
    target = (ckpt / "model-00001-of-00001.safetensors").resolve()
    assert hub_server.file_bytes(REPO, "model-00001-of-00001.safetensors") == target.read_bytes()
    assert doc["files"][[f["path"] for f in doc["files"]].index("model-00001-of-00001.safetensors")]["sha256"] == (
        hashlib.sha256(target.read_bytes()).hexdigest()
    )


def test_dry_run_unreachable_hub_says_remote_not_checked(
    cli: Callable[..., Any], ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from huggingface_hub import constants

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    res = _push(cli, ckpts["policy"], REPO, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "remote not checked (unreachable" in res.stdout and "not checked model.safetensors" in res.stdout
    assert "added" not in res.stdout
    monkeypatch.setenv("HF_TOKEN", "hf_unused_token_for_this_test")
    res = _push(cli, ckpts["policy"], REPO)
    assert res.exit_code == 1 and "the Hub is unreachable" in res.stderr and "nothing was pushed" in res.stderr


def test_stale_shards_are_deleted_when_layout_changes(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    assert _push(cli, ckpts["sharded"], REPO, "-q").exit_code == 0
    doc = _json(_push(cli, ckpts["policy"], REPO, "--json"))
    assert sorted(doc["deleted"]) == [
        "model-00001-of-00001.safetensors",
        "model-value-head.safetensors",
        "model.safetensors.index.json",
    ]
    files = hub_server.list_files(REPO)
    assert "model.safetensors" in files and "model.safetensors.index.json" not in files


#: Files on the remote that vhtool did not write (issue 20, point 3): a Mistral-style consolidated file, another
#: tool's half-precision copy and ONNX export, the user's own card and scripts.
FOREIGN = {
    "consolidated.safetensors": b"consolidated weights of another tool" * 50,
    "model.fp16.safetensors": b"half-precision copy" * 50,
    "onnx/model.onnx": b"onnx export" * 50,
    "original/params.json": b'{"dim": 8}',
    "README.md": b"# My own card\n",
    "scripts/eval.py": b"print('eval')\n",
}


def _assert_foreign_untouched(hub_server: HubServer, repo: str) -> None:
    for name, data in FOREIGN.items():
        assert hub_server.file_bytes(repo, name) == data, name


def test_push_never_deletes_files_it_did_not_publish(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    hub_server.commit_files(REPO, FOREIGN)
    dry = _json(_push(cli, ckpts["policy"], REPO, "--dry-run", "--json"))
    assert dry["to_delete"] == []
    doc = _json(_push(cli, ckpts["policy"], REPO, "--json"))
    assert doc["deleted"] == [] and doc["model_card"] == "remote-kept"
    _assert_foreign_untouched(hub_server, REPO)
    published = json.loads(hub_server.file_bytes(REPO, "vhtool.json"))["published"]
    assert not set(FOREIGN) & set(published)  # the user's card is not vhtool's either
    # A second push of another checkpoint (new value head): still nothing of theirs goes.
    doc = _json(_push(cli, ckpts["policy_seed1"], REPO, "--json"))
    assert doc["pushed"] and doc["deleted"] == []
    _assert_foreign_untouched(hub_server, REPO)


def test_layout_switch_cleans_the_other_half_and_nothing_else(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    hub_server.commit_files(REPO, FOREIGN)
    assert _push(cli, ckpts["policy"], REPO, "-q").exit_code == 0
    # single file -> sharded: the remote model.safetensors goes
    res = _push(cli, ckpts["sharded"], REPO, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert [line.split()[:2] for line in res.stdout.splitlines() if "deleted" in line.split()[:1]] == [
        ["deleted", "model.safetensors"]
    ]
    doc = _json(_push(cli, ckpts["sharded"], REPO, "--json"))
    assert doc["deleted"] == ["model.safetensors"]
    _assert_foreign_untouched(hub_server, REPO)
    # sharded -> single file: the remote index and the shards it names go
    doc = _json(_push(cli, ckpts["policy"], REPO, "--json"))
    assert sorted(doc["deleted"]) == [
        "model-00001-of-00001.safetensors",
        "model-value-head.safetensors",
        "model.safetensors.index.json",
    ]
    _assert_foreign_untouched(hub_server, REPO)
    files = set(hub_server.list_files(REPO))
    assert {"model.safetensors", *FOREIGN} <= files and "model.safetensors.index.json" not in files


def test_layout_switch_without_a_published_list(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    """A remote sharded by someone else (no vhtool.json): the index and its shards are the other half all the same."""
    sharded = ckpts["sharded"]
    names = ["model.safetensors.index.json", "model-00001-of-00001.safetensors", "model-value-head.safetensors"]
    hub_server.commit_files(REPO, {**FOREIGN, **{n: (sharded / n).read_bytes() for n in names}})
    doc = _json(_push(cli, ckpts["policy"], REPO, "--json"))
    assert sorted(doc["deleted"]) == sorted(names)
    _assert_foreign_untouched(hub_server, REPO)


def test_files_vhtool_published_before_and_no_longer_has_are_deleted(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path], tmp_path: Path
) -> None:
    with_extra = tmp_path / "with-licence"
    shutil.copytree(ckpts["with_reward"], with_extra)
    (with_extra / "LICENSE").write_text("MIT\n")
    hub_server.commit_files(REPO, FOREIGN)
    assert _push(cli, with_extra, REPO, "-q").exit_code == 0
    published = json.loads(hub_server.file_bytes(REPO, "vhtool.json"))["published"]
    assert "LICENSE" in published and "reward_model_adapter/adapter_model.safetensors" in published
    dry = _json(_push(cli, ckpts["policy"], REPO, "--dry-run", "--json"))
    expected = sorted(["LICENSE", *(p for p in published if p.startswith("reward_model_adapter/"))])
    assert sorted(dry["to_delete"]) == expected
    doc = _json(_push(cli, ckpts["policy"], REPO, "--json"))
    assert sorted(doc["deleted"]) == expected
    files = set(hub_server.list_files(REPO))
    assert not files & set(expected)
    _assert_foreign_untouched(hub_server, REPO)


def test_unchanged_repush_leaves_vhtool_json_unchanged(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]
) -> None:
    """The published vhtool.json is deterministic: the same checkpoint pushed twice finds nothing to push."""
    for name in ("with_reward", "sharded"):
        repo = f"user/{name.replace('_', '-')}"
        assert _push(cli, ckpts[name], repo, "-q").exit_code == 0
        blob = hub_server.file_entry(repo, "vhtool.json").git_oid
        doc = _json(_push(cli, ckpts[name], repo, "--json"))
        assert doc["pushed"] is False and "vhtool.json" in doc["unchanged"], doc
        assert hub_server.file_entry(repo, "vhtool.json").git_oid == blob


def test_branch_pr_and_skipped_entries(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpts["policy"], ckpt)
    (ckpt / ".DS_Store").write_bytes(b"junk")
    (ckpt / ".policy.tmp-1234").mkdir()  # a temp sibling left inside by some tool
    (ckpt / "notes.md").write_text("scratch notes")
    (ckpt / "scratch").mkdir()
    (ckpt / "scratch" / "a.txt").write_text("x")
    doc = _json(_push(cli, ckpt, REPO, "--revision", "dev", "--json"))
    assert doc["branch_created"] is True and doc["revision"] == "dev"
    skipped = {s["path"] for s in doc["skipped"]}
    assert {".DS_Store", ".policy.tmp-1234", "notes.md", "scratch/"} <= skipped
    dev_files = hub_server.list_files(REPO, "dev")
    assert "model.safetensors" in dev_files and not {"notes.md", ".DS_Store", "scratch/a.txt"} & set(dev_files)
    assert hub_server.list_files(REPO, "main") == [".gitattributes"]

    doc = _json(_push(cli, ckpts["policy_seed1"], REPO, "--create-pr", "--json"))
    assert doc["pushed"] and doc["commit"]["pr_url"] and "/discussions/1" in doc["commit"]["pr_url"]
    assert hub_server.repo(REPO).pull_requests and hub_server.list_files(REPO, "main") == [".gitattributes"]


def test_link_leaving_the_checkpoint_is_refused(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpts["policy"], ckpt)
    outside = tmp_path / "secret.txt"
    outside.write_text("do not upload")
    (ckpt / "extra.txt").symlink_to(outside)
    res = _push(cli, ckpt, REPO)
    assert res.exit_code == 1 and "outside the checkpoint" in res.stderr and "refusing to push" in res.stderr
    assert REPO not in hub_server.repos and not hub_server.find_requests("POST")


def test_existing_user_card_is_kept(hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]) -> None:
    hub_server.commit_files(REPO, {"README.md": b"# My own card\n"})
    doc = _json(_push(cli, ckpts["policy"], REPO, "--json"))
    assert doc["model_card"] == "remote-kept" and "README.md" not in doc["uploaded"]
    assert hub_server.file_bytes(REPO, "README.md") == b"# My own card\n"


# ------------------------------------------------------------------------------------------------ the token


def test_token_appears_nowhere(hub_server: HubServer, ckpts: dict[str, Path], tmp_path: Path) -> None:
    token = "hf_VHTOOLsecretTOKEN1234567890zz"
    hub_server.add_token(token, "user")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpts["with_reward"], ckpt)
    env = {**os.environ, "HF_TOKEN": token, "HF_ENDPOINT": hub_server.endpoint}
    env["HF_HUB_OFFLINE"] = "0"
    outputs = []
    for extra in (["--json"], []):
        proc = subprocess.run(
            [VHTOOL, "push", str(ckpt), REPO, *extra], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        outputs += [proc.stdout, proc.stderr]
    bad = subprocess.run(
        [VHTOOL, "push", str(ckpt), "user/other", "--token", token + "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "rejected the token" in bad.stderr
    outputs += [bad.stdout, bad.stderr]
    assert len(hub_server.commits(REPO)) == 2
    for text in outputs:
        assert token not in text
    for name in hub_server.list_files(REPO):
        assert token.encode() not in hub_server.file_bytes(REPO, name), name
    for r in hub_server.requests:
        assert token not in r.target and token.encode() not in r.body
        assert all(token not in v for v in r.headers.values())
    for folder in (ckpt, hub_server.hf_home):
        for p in folder.rglob("*"):
            if p.is_file():
                assert token.encode() not in p.read_bytes(), p


def test_missing_token_is_a_clear_error(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    res = _push(cli, ckpts["policy"], REPO)
    assert res.exit_code == 1
    assert "no Hugging Face token found; log in with `hf auth login` or set HF_TOKEN" in res.stderr
    assert REPO not in hub_server.repos


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, "rejected the token (401"), (403, "may not write to user/tiny-policy (403"), (500, "failed with 500")],
)
def test_hub_errors_on_commit_exit_1_and_nothing_pushed(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path], status: int, expected: str
) -> None:
    hub_server.fail_next(status, "/commit/", method="POST")
    res = _push(cli, ckpts["policy"], REPO, "--json")
    assert res.exit_code == 1
    assert "nothing was committed" in json_error(res.stdout, 1)["message"]  # nothing reported as pushed
    assert expected in res.stderr and "nothing was committed" in res.stderr and "Traceback" not in res.stderr
    assert len(hub_server.commits(REPO)) == 1  # only the initial commit
    assert hub_server.token not in res.stderr


def test_xet_upload_failure_is_a_clean_exit_1(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's default upload path (Xet storage, hf_xet installed) failing: one line, exit 1, nothing committed.

    The loopback Hub has no Xet storage (its token endpoint answers 501), which is how this path is exercised.
    """
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    res = _push(cli, ckpts["policy"], REPO, "--json")
    err = json_error(res.stdout, 1)
    assert err["type"] == "HubUnreachableError", err
    assert "Xet storage failed" in str(err["message"]) and "nothing was committed" in str(err["message"])
    assert hub_server.find_requests(path_contains="/xet-write-token/")
    assert len(hub_server.commits(REPO)) == 1  # the repo was created; nothing committed to it
    assert "Traceback" not in res.stderr


def test_create_repo_forbidden_exit_1(hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path]) -> None:
    hub_server.fail_next(403, "/api/repos/create", method="POST")
    res = _push(cli, ckpts["policy"], REPO)
    assert res.exit_code == 1 and "403 Forbidden" in res.stderr and REPO not in hub_server.repos


# ------------------------------------------------------------------------------------------------ bad input


def test_not_a_checkpoint_exit_2(cli: Callable[..., Any], tmp_path: Path) -> None:
    res = _push(cli, tmp_path, REPO, "--dry-run")
    assert res.exit_code == 2 and "not a checkpoint" in res.stderr
    (tmp_path / "config.json").write_text("{}")
    res = _push(cli, tmp_path, REPO, "--dry-run")
    assert res.exit_code == 2 and "not a checkpoint" in res.stderr
    res = _push(cli, tmp_path / "missing", REPO, "--dry-run")
    assert res.exit_code == 2 and "no such file or directory" in res.stderr


def test_files_that_no_longer_match_vhtool_json_exit_1(
    cli: Callable[..., Any], ckpts: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpts["policy"], ckpt)
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    res = _push(cli, ckpt, REPO, "--dry-run")
    assert res.exit_code == 1
    assert "refusing to push" in res.stderr and "sha256" in res.stderr and "model.safetensors" in res.stderr


def test_inconsistent_index_exit_1(cli: Callable[..., Any], ckpts: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpts["sharded"], ckpt)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"]["v_head.summary.weight"] = "model-00001-of-00001.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    res = _push(cli, ckpt, REPO, "--dry-run")
    assert res.exit_code == 1 and "refusing to push" in res.stderr and "index" in res.stderr


def test_missing_value_head_exit_1(cli: Callable[..., Any], tmp_path: Path) -> None:
    from vhtool.hub import resolve_source

    ckpt = tmp_path / "plain"
    shutil.copytree(resolve_source("builtin:tiny-gpt2").path, ckpt)
    res = _push(cli, ckpt, REPO, "--dry-run")
    assert res.exit_code == 1 and "refusing to push" in res.stderr


@pytest.mark.parametrize("repo_id", ["not a repo!!", "bare-name", "a/b/c", "user/-bad--name.."])
def test_invalid_repo_id_exit_2(cli: Callable[..., Any], ckpts: dict[str, Path], repo_id: str) -> None:
    res = _push(cli, ckpts["policy"], repo_id, "--dry-run")
    assert res.exit_code == 2 and "repo id" in res.stderr


# ------------------------------------------------------------------------------------------------ the Python API


def test_wrapper_push_to_hub_includes_value_head(hub_server: HubServer, ckpts: dict[str, Path]) -> None:
    import torch
    from safetensors.torch import load

    import vhtool

    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpts["policy"]))
    model.push_to_hub("user/wrapped")
    state = load(hub_server.file_bytes("user/wrapped", "model.safetensors"))
    assert torch.equal(state["v_head.summary.weight"], model.v_head.summary.weight.detach())
    assert torch.equal(state["v_head.summary.bias"], model.v_head.summary.bias.detach())
    assert any(k.startswith("transformer.h.0.") for k in state)
    assert "v_head.summary.weight" not in dict(model.pretrained_model.state_dict())  # detached again afterwards


# ------------------------------------------------------------------------------------------------ the model card


def test_model_card_metadata_from_vhtool_json() -> None:
    from vhtool.checkpoint.model_card import render_model_card

    hub = {
        "role": "policy",
        "architecture": "causal",
        "source": {"kind": "hub", "model": "org/base-model", "revision": "v1"},
        "value_head": {"init_strategy": "normal", "initializer_range": 0.05, "seed": 7, "dtype": "F32"},
        "reward_adapter": {"name": "rm", "subfolder": "rm", "peft_type": "LORA"},
    }
    card = render_model_card("me/policy", hub, {"model_type": "llama"})
    assert "\nbase_model: org/base-model\n---\n" in card and "revision `v1`" in card
    assert "initialised `normal`, initializer range 0.05, seed 7" in card and "`rm` in the subfolder `rm/`" in card
    ref = {
        "role": "reference",
        "architecture": "seq2seq",
        "source": {"kind": "local", "model": "/home/me/secret-model", "path": "/home/me/secret-model"},
        "reference": {"shared_layers": 2, "pattern": "model.layers"},
    }
    card = render_model_card("me/ref", ref, {"model_type": "t5", "is_encoder_decoder": True})
    assert "base_model" not in card and "secret-model" not in card  # local paths never leak into the card
    assert "first 2 layer(s) with the policy (block pattern `model.layers`)" in card
    assert 'AutoModelForSeq2SeqLMWithValueHead.from_pretrained("me/ref")' in card and "frozen reference" in card
    # Deterministic (a re-push compares the card's git blob id): the same bytes whatever the order of the
    # manifest's keys, and in another process with another hash seed.
    card = render_model_card("me/ref", ref, {})
    assert render_model_card("me/ref", dict(reversed(list(ref.items()))), {}) == card
    code = (
        "import json, sys\n"
        "from vhtool.checkpoint.model_card import render_model_card\n"
        "sys.stdout.write(render_model_card('me/ref', json.loads(sys.argv[1]), {}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(ref)],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == card


def test_push_reference_checkpoint(
    hub_server: HubServer, cli: Callable[..., Any], ckpts: dict[str, Path], tmp_path: Path
) -> None:
    from vhtool.checkpoint.reference_op import make_reference

    make_reference(ckpts["policy"], tmp_path / "ref", shared_layers=1, durable=False)
    res = _push(cli, tmp_path / "ref", "user/ref")
    assert res.exit_code == 0, res.stderr
    assert "Pushed" in res.stdout and "user/ref@main" in res.stdout and "/commit/" in res.stdout
    card = hub_server.file_bytes("user/ref", "README.md").decode()
    assert "A **reference** checkpoint" in card and "shares its embeddings and first 1 layer(s)" in card
    _assert_on_hub(hub_server, "user/ref", tmp_path / "ref")


def test_checkpoint_card_is_used_as_is(cli: Callable[..., Any], ckpts: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpts["policy"], ckpt)
    (ckpt / "README.md").write_text("# hand-written\n")
    doc = _json(_push(cli, ckpt, REPO, "--dry-run", "--json"))
    card = [f for f in doc["files"] if f["path"] == "README.md"]
    assert doc["model_card"] == "checkpoint" and card[0]["origin"] == "checkpoint" and card[0]["size"] == 15
