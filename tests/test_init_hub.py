"""`vhtool init` and `from_pretrained` with Hub ids, against the loopback Hub server (no internet)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi

import vhtool
from vhtool.builtin import builtin_path


def upload(hub: Any, repo: str, folder: Path, *, branch: str | None = None) -> None:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(repo, exist_ok=True)
    if branch:
        api.create_branch(repo, branch=branch, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(folder), revision=branch)


def test_init_from_hub_id_takes_hashes_from_the_cache(hub_server: Any, cli: Any, tmp_path: Path) -> None:
    upload(hub_server, "user/tiny", builtin_path("tiny-gpt2"))
    res = cli("init", "user/tiny", "-o", tmp_path / "p", "--link", "hardlink", "--json")
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((tmp_path / "p" / "vhtool.json").read_text())
    assert manifest["source"]["kind"] == "hub" and manifest["source"]["model"] == "user/tiny"
    assert len(manifest["source"]["commit"]) == 40
    for name, rec in manifest["files"].items():
        # linked, yet hashed: the Hub cache names blobs by their sha256, so no read was needed
        assert rec["sha256"] == hashlib.sha256((tmp_path / "p" / name).read_bytes()).hexdigest()


def test_init_and_load_honour_revision(hub_server: Any, cli: Any, tmp_path: Path) -> None:
    upload(hub_server, "user/tiny", builtin_path("tiny-gpt2"))
    # a branch whose weights differ: a policy made by vhtool init of the same model
    assert cli("init", "builtin:tiny-gpt2", "-o", tmp_path / "policy", "--v-head-init", "normal").exit_code == 0
    upload(hub_server, "user/tiny", tmp_path / "policy", branch="with-head")
    res = cli("init", "user/tiny", "-o", tmp_path / "again", "--revision", "with-head")
    assert res.exit_code == 2 and "already has a value head" in res.stderr
    # the suggestion names the Hub id and revision as typed (not the cache snapshot), and works as written
    (suggested,) = re.findall(r"`vhtool (init [^`]+)`", " ".join(res.stderr.split()))
    assert suggested == f"init user/tiny --revision with-head -o {tmp_path / 'again'} --reinit-head"
    assert cli(*shlex.split(suggested), "-q").exit_code == 0
    assert cli("init", "user/tiny", "-o", tmp_path / "main").exit_code == 0

    on_branch = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained("user/tiny", revision="with-head")
    assert on_branch.v_head_loaded and on_branch.v_head_source == "user/tiny/model.safetensors"
    local = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "policy"))
    assert torch.equal(on_branch.v_head.summary.weight, local.v_head.summary.weight)
    on_main = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained("user/tiny")
    assert on_main.v_head_loaded is False


def test_unknown_hub_repo_is_input_error(hub_server: Any, cli: Any, tmp_path: Path) -> None:
    res = cli("init", "user/does-not-exist", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "user/does-not-exist" in res.stderr
    assert not (tmp_path / "x").exists()


#: What a Mistral-style repo carries beside the transformers checkpoint (issue 20, point 9): none of it is read.
EXTRAS = {
    "consolidated.safetensors": b"\0" * 4096,
    "original/params.json": b'{"dim": 8}',
    "original/consolidated.00.pth": b"\0" * 1024,
    "onnx/model.onnx": b"\0" * 2048,
    "model.fp16.safetensors": b"\0" * 2048,
}


def _fetched(hub: Any) -> set[str]:
    """Every repo path the loopback Hub was asked for (``/{repo}/resolve/{revision}/{path}``)."""
    paths = set()
    for r in hub.requests:
        parts = r.decoded_path.strip("/").split("/")
        if len(parts) > 4 and parts[2] == "resolve":
            paths.add("/".join(parts[4:]))
    return paths


def test_hub_read_downloads_only_what_the_checkpoint_names(
    hub_server: Any, cli: Any, tmp_path: Path, saved_model: Any
) -> None:
    upload(hub_server, "user/mistral-style", builtin_path("tiny-gpt2"))
    hub_server.commit_files("user/mistral-style", EXTRAS)
    sharded = saved_model("llama", sharded=True)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    upload(hub_server, "user/sharded-style", sharded)
    hub_server.commit_files("user/sharded-style", {**EXTRAS, "model-00099-of-00099.safetensors": b"\0" * 512})
    for repo, weights in [
        ("user/mistral-style", {"model.safetensors"}),
        ("user/sharded-style", {"model.safetensors.index.json", *index["weight_map"].values()}),
    ]:
        hub_server.clear_requests()
        out = tmp_path / repo.split("/")[1]
        res = cli("init", repo, "-o", out, "--json")
        assert res.exit_code == 0, res.stderr
        fetched = _fetched(hub_server)
        assert weights <= fetched, fetched
        assert not fetched & {*EXTRAS, "model-00099-of-00099.safetensors"}, fetched
        assert not any(p.endswith((".safetensors", ".pth", ".onnx")) for p in fetched - weights), fetched
        assert cli("verify", out).exit_code == 0
    cache = Path(hub_server.hf_home) / "hub"
    cached = {p.name for p in cache.rglob("*") if p.is_file() or p.is_symlink()}
    assert not cached & {"consolidated.safetensors", "params.json", "model.onnx", "model.fp16.safetensors"}


def test_hub_read_works_offline_from_the_cache(hub_server: Any, cli: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Read once online, then offline: the two-step read is answered from the cache, no request made."""
    upload(hub_server, "user/tiny", builtin_path("tiny-gpt2"))
    hub_server.commit_files("user/tiny", EXTRAS)
    assert cli("init", "user/tiny", "-o", tmp_path / "online").exit_code == 0
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_server.clear_requests()
    res = cli("init", "user/tiny", "-o", tmp_path / "offline", "--json")
    assert res.exit_code == 0, res.stderr
    assert not hub_server.requests
    online = json.loads((tmp_path / "online" / "vhtool.json").read_text())
    offline = json.loads((tmp_path / "offline" / "vhtool.json").read_text())
    assert online["files"] == offline["files"] and online["source"]["commit"] == offline["source"]["commit"]
    assert cli("verify", "user/tiny").exit_code == 1  # a plain model: read from the cache, no head
