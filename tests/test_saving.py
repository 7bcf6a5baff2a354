"""Saving a trained policy into the folder it came from never leaves a stale value head behind.

The reproducer: ``vhtool init builtin:tiny-gpt2 --link hardlink -o D`` (sharded: base shard hard-linked,
``model-value-head.safetensors``, an index), change the head as training would, ``save_pretrained(D)``
with vhtool's class or TRL's. Afterwards vhtool, TRL 1.12.0 and ``vhtool score`` must all read the new
head, and the built-in base file must be untouched.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import vhtool
from vhtool.builtin import builtin_path

TEXT = "hello world"


def _head_value(model: Any, tok: Any) -> float:
    model.eval()
    ids = tok(TEXT, return_tensors="pt")
    with torch.no_grad():
        _, _, value = model(**ids)
    return float(value[0, -1])


def _trained(cls: Any, path: Path) -> Any:
    model = cls.from_pretrained(str(path))
    with torch.no_grad():  # what a PPO step does to the head, made large enough to see
        model.v_head.summary.weight.fill_(0.05)
        model.v_head.summary.bias.fill_(0.75)
    return model


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("saver", ["vhtool", "trl"])
@pytest.mark.parametrize("link", ["hardlink", "copy"])
def test_saving_into_an_init_folder_loads_the_new_head_everywhere(
    tmp_path: Path, cli: Callable[..., Any], saver: str, link: str
) -> None:
    from transformers import AutoTokenizer
    from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlCausal

    base_file = builtin_path("builtin:tiny-gpt2") / "model.safetensors"
    base_sha = _sha(base_file)
    d = tmp_path / "D"
    assert cli("init", "builtin:tiny-gpt2", "--link", link, "-o", d, "-q").exit_code == 0
    sharded = (d / "model.safetensors.index.json").exists()
    assert sharded == (link == "hardlink")
    tok = AutoTokenizer.from_pretrained(str(d))

    if saver == "vhtool":
        model = _trained(vhtool.AutoModelForCausalLMWithValueHead, d)
    else:  # TRL 1.12.0 cannot load a local sharded checkpoint (TRL #1917): it trains from a single-file copy
        single = tmp_path / "single"
        assert cli("init", "builtin:tiny-gpt2", "-o", single, "-q").exit_code == 0
        model = _trained(TrlCausal, single)
    expected = _head_value(model, tok)
    model.save_pretrained(str(d))
    del model

    assert _sha(base_file) == base_sha  # the hard-linked base was never written through

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(d))
    assert ours.v_head_loaded
    assert _head_value(ours, tok) == pytest.approx(expected, abs=1e-5)
    theirs = TrlCausal.from_pretrained(str(d))  # loads: the save left (or made) a single model.safetensors
    assert _head_value(theirs, tok) == pytest.approx(expected, abs=1e-5)

    res = cli("score", d, "--text", TEXT, "--head", "value", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["records"][0]["score"] == pytest.approx(expected, abs=1e-5)

    stale_warning = any("sits beside" in str(w.message) for w in caught)
    res = cli("verify", d, "--json")
    if saver == "vhtool":
        # vhtool's save removed what it superseded and kept vhtool.json true: nothing stale, verify passes.
        assert sorted(p.name for p in d.glob("*.safetensors")) == ["model.safetensors"]
        assert not (d / "model.safetensors.index.json").exists() and not stale_warning
        assert res.exit_code == 0, res.stdout
        manifest = json.loads((d / "vhtool.json").read_text())
        assert set(manifest["files"]) == {"model.safetensors"} and manifest["saved_by"] == "save_pretrained"
    elif sharded:
        # TRL's save leaves the old index and value-head shard: loaders ignore them (with a warning),
        # and verify fails naming them.
        assert stale_warning
        assert res.exit_code == 1
        stale = [c for c in json.loads(res.stdout)["checks"] if c["name"] == "stale weights"]
        assert stale and "model-value-head.safetensors" in stale[0]["detail"] and not stale[0]["ok"]


def test_save_into_a_new_folder_and_with_user_files_beside(tmp_path: Path, cli: Callable[..., Any]) -> None:
    d = tmp_path / "D"
    assert cli("init", "builtin:tiny-gpt2", "-o", d, "-q").exit_code == 0
    (d / "notes.md").write_text("mine")
    model = _trained(vhtool.AutoModelForCausalLMWithValueHead, d)
    model.save_pretrained(str(tmp_path / "fresh"))
    model.save_pretrained(str(d))
    assert (d / "notes.md").read_text() == "mine"  # only superseded weight files are removed
    assert not list(tmp_path.glob(".*vhtool-*"))  # no temporary folder or lock left
    assert sorted(p.name for p in (tmp_path / "fresh").glob("*.safetensors")) == ["model.safetensors"]
