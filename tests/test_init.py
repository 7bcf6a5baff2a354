"""`vhtool init`: out-of-core policy checkpoints, loadable by vhtool, TRL 1.12.0 and plain transformers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

import vhtool
from tests.helpers import SEQ2SEQ_ARCHS, VOCAB
from vhtool.checkpoint.init_op import HeadSpec, make_value_head

ARCHS = ("gpt2", "llama", "opt", "gpt-neox", "t5")
LINKS = ("auto", "copy", "hardlink", "symlink")


def head_tensors(out: Path) -> dict[str, torch.Tensor]:
    index = out / "model.safetensors.index.json"
    if index.exists():
        wmap = json.loads(index.read_text())["weight_map"]
        file = out / wmap["v_head.summary.weight"]
    else:
        file = out / "model.safetensors"
    with safe_open(str(file), "pt") as fh:
        return {k: fh.get_tensor(k) for k in ("v_head.summary.weight", "v_head.summary.bias")}


def plain_logits(path: Path, arch: str) -> torch.Tensor:
    import transformers as tf

    cls = tf.AutoModelForSeq2SeqLM if arch in SEQ2SEQ_ARCHS else tf.AutoModelForCausalLM
    model = cls.from_pretrained(str(path)).eval()
    ids = torch.arange(3, 12).reshape(1, 9) % VOCAB
    kw = {"decoder_input_ids": ids[:, :4]} if arch in SEQ2SEQ_ARCHS else {}
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("link", LINKS)
def test_init_output_loads_everywhere(
    arch: str, sharded: bool, link: str, saved_model: Any, cli: Any, tmp_path: Path
) -> None:
    src = saved_model(arch, sharded=sharded)
    out = tmp_path / "out"
    res = cli("init", src, "-o", out, "--v-head-init", "normal", "--seed", "3", "--link", link, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    manifest = json.loads((out / "vhtool.json").read_text())
    single = not sharded and link in ("auto", "copy")
    assert doc["layout"] == manifest["layout"] == ("single-file" if single else "sharded")
    assert manifest["value_head"] | {} == manifest["value_head"]
    assert manifest["value_head"]["init_strategy"] == "normal" and manifest["value_head"]["seed"] == 3
    # the head on disk is the one the recorded strategy and seed produce
    hidden = manifest["value_head"]["hidden_size"]
    w, b = make_value_head(hidden, HeadSpec("normal", 0.2, 3))
    heads = head_tensors(out)
    assert heads["v_head.summary.weight"].numpy().tobytes() == w.tobytes()
    assert heads["v_head.summary.bias"].numpy().tobytes() == b.tobytes()
    # files recorded with their real size and sha256 (linked files only when hashed)
    for name, rec in manifest["files"].items():
        data = (out / name).read_bytes()
        assert rec["size"] == len(data)
        if rec["sha256"] is not None:
            assert rec["sha256"] == hashlib.sha256(data).hexdigest()
        if link == "symlink" and rec["how"] == "symlink":
            assert (out / name).is_symlink()
    # loads in vhtool with the recorded head
    cls = (
        vhtool.AutoModelForSeq2SeqLMWithValueHead
        if arch in SEQ2SEQ_ARCHS
        else vhtool.AutoModelForCausalLMWithValueHead
    )
    model = cls.from_pretrained(str(out))
    assert model.v_head_loaded
    assert torch.equal(model.v_head.summary.weight.detach(), heads["v_head.summary.weight"])
    # loads as a plain transformers model with the source's logits
    assert torch.equal(plain_logits(out, arch), plain_logits(src, arch))
    if single:  # TRL 1.12.0 reads local single-file checkpoints
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

        trl = AutoModelForSeq2SeqLMWithValueHead if arch in SEQ2SEQ_ARCHS else AutoModelForCausalLMWithValueHead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = trl.from_pretrained(str(out))
        assert torch.equal(theirs.v_head.summary.weight.detach(), heads["v_head.summary.weight"])
        assert torch.equal(theirs.v_head.summary.bias.detach(), heads["v_head.summary.bias"])


def test_sharded_source_keeps_its_shards(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = saved_model("llama", sharded=True)
    out = tmp_path / "out"
    assert cli("init", src, "-o", out, "--link", "copy").exit_code == 0
    src_index = json.loads((src / "model.safetensors.index.json").read_text())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    for shard in set(src_index["weight_map"].values()):
        assert (out / shard).read_bytes() == (src / shard).read_bytes()
    assert index["weight_map"]["v_head.summary.weight"] == "model-value-head.safetensors"
    assert {k: v for k, v in index["weight_map"].items() if not k.startswith("v_head.")} == src_index["weight_map"]
    assert index["metadata"]["total_size"] == src_index["metadata"]["total_size"] + 4 * (32 + 1)


def test_single_file_keeps_original_bytes_and_metadata(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = saved_model("gpt2") / "model.safetensors"
    out = tmp_path / "out"
    assert cli("init", src.parent, "-o", out).exit_code == 0
    a, b = src.read_bytes(), (out / "model.safetensors").read_bytes()
    na, nb = struct.unpack("<Q", a[:8])[0], struct.unpack("<Q", b[:8])[0]
    data_a = a[8 + na :]
    assert b[8 + nb : 8 + nb + len(data_a)] == data_a  # the data region is streamed across unchanged
    assert len(b) - 8 - nb == len(data_a) + 4 * 33
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}


def test_deterministic_output(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = saved_model("gpt2")
    for name in ("a", "b"):
        assert cli("init", src, "-o", tmp_path / name, "--seed", "7").exit_code == 0
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert cli("init", src, "-o", tmp_path / "c", "--seed", "8").exit_code == 0
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != (tmp_path / "a" / "model.safetensors").read_bytes()


def test_random_init_matches_nn_linear_distribution() -> None:
    w, b = (np.asarray(x) for x in make_value_head(10000, HeadSpec("random")))
    bound = 1 / np.sqrt(10000)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound
    w2 = np.asarray(make_value_head(10000, HeadSpec("normal", 0.05))[0])
    assert abs(w2.std() - 0.05) < 0.005 and abs(w2.mean()) < 0.005


def test_builtin_models_init_offline(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("tiny-gpt2", "tiny-llama", "tiny-t5"):
        res = cli("init", f"builtin:{name}", "--json")
        assert res.exit_code == 0, res.stderr
        out = tmp_path / f"{name}-value-head"
        assert json.loads(res.stdout)["out"] == f"{name}-value-head"
        assert (out / "tokenizer.json").is_file() and (out / "vhtool.json").is_file()
        manifest = json.loads((out / "vhtool.json").read_text())
        assert manifest["source"] == {"model": f"builtin:{name}", "kind": "builtin"}


def test_existing_output_and_force(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = saved_model("gpt2")
    out = tmp_path / "out"
    assert cli("init", src, "-o", out, "--seed", "1").exit_code == 0
    before = (out / "model.safetensors").read_bytes()
    res = cli("init", src, "-o", out, "--seed", "2")
    assert res.exit_code == 2 and "already exists" in res.stderr
    assert (out / "model.safetensors").read_bytes() == before
    assert cli("init", src, "-o", out, "--seed", "2", "--force").exit_code == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary siblings left


def test_source_with_value_head_needs_reinit_head(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = saved_model("gpt2")
    assert cli("init", src, "-o", tmp_path / "p", "--seed", "1").exit_code == 0
    res = cli("init", tmp_path / "p", "-o", tmp_path / "q")
    assert res.exit_code == 2 and "already has a value head" in res.stderr and not (tmp_path / "q").exists()
    # --force only replaces a previous output (issue 20, point 5): it never re-initialises a head
    res = cli("init", tmp_path / "p", "-o", tmp_path / "q", "--force")
    assert res.exit_code == 2 and "--reinit-head" in res.stderr and not (tmp_path / "q").exists()
    res = cli("init", tmp_path / "p", "-o", tmp_path / "q", "--reinit-head", "--seed", "2", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["reinitialised"] is True
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as fh:
        assert sorted(k for k in fh.keys() if k.startswith("v_head")) == [  # noqa: SIM118
            "v_head.summary.bias",
            "v_head.summary.weight",
        ]
    assert torch.equal(plain_logits(tmp_path / "q", "gpt2"), plain_logits(src, "gpt2"))


def test_pickle_source_needs_allow_pickle(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "pickled"
    src.mkdir()
    shutil.copy(saved_model("gpt2") / "config.json", src)
    from safetensors.torch import load_file

    torch.save(load_file(str(saved_model("gpt2") / "model.safetensors")), src / "pytorch_model.bin")
    res = cli("init", src, "-o", tmp_path / "out")
    assert res.exit_code == 2 and "pickle" in res.stderr and "--allow-pickle" in res.stderr
    assert not (tmp_path / "out").exists()
    res = cli("init", src, "-o", tmp_path / "out", "--allow-pickle")
    assert res.exit_code == 0, res.stderr
    assert torch.equal(plain_logits(tmp_path / "out", "gpt2"), plain_logits(saved_model("gpt2"), "gpt2"))


def _corrupt_header(d: Path) -> None:
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json!!!!"
    f.write_bytes(bytes(data))


def _no_hidden(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for key in ("n_embd", "hidden_size"):
        cfg.pop(key, None)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("case", "args", "message"),
    [
        ("missing", ["{tmp}/nope"], "no such file or directory"),
        ("not-a-checkpoint", ["{tmp}/empty"], "not a checkpoint"),
        ("no-hidden-size", ["{src}"], "no usable hidden size"),
        ("corrupt-header", ["{src}"], "not valid JSON"),
        ("offline-hub-id", ["someone/some-model"], "cannot fetch"),
        ("unknown-init", ["{src}", "--v-head-init", "xavier"], "'xavier' is not a choice for --v-head-init"),
        ("negative-range", ["{src}", "--v-head-init", "normal", "--v-head-initializer-range", "-0.1"], "positive"),
        ("parent-is-a-file", ["{src}", "-o", "{tmp}/afile/out"], "a parent of the output is a file"),
        ("bad-link", ["{src}", "--link", "teleport"], "'teleport' is not a choice for --link; choose one of 'auto'"),
    ],
)
def test_bad_input(case: str, args: list[str], message: str, saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(saved_model("gpt2"), src)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    if case == "no-hidden-size":
        _no_hidden(src)
    if case == "corrupt-header":
        _corrupt_header(src)
    before = {p.name for p in tmp_path.iterdir()}
    argv = [a.format(tmp=tmp_path, src=src) for a in args]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    res = cli("init", *argv)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1  # the parser's errors too: one line
    assert {p.name for p in tmp_path.iterdir()} == before  # nothing written


def test_reflink_mode_reports_unsupported_filesystems_clearly(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    res = cli("init", saved_model("gpt2"), "-o", tmp_path / "out", "--link", "reflink")
    if res.exit_code == 0:  # a filesystem that can reflink (btrfs, xfs)
        manifest = json.loads((tmp_path / "out" / "vhtool.json").read_text())
        assert {r["how"] for r in manifest["files"].values()} >= {"reflink"}
    else:
        assert res.exit_code == 2 and "cannot reflink" in res.stderr
        assert not (tmp_path / "out").exists()


def test_hash_flag_hashes_linked_files(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = saved_model("gpt2", sharded=True)
    assert cli("init", src, "-o", tmp_path / "h", "--link", "hardlink", "--hash").exit_code == 0
    manifest = json.loads((tmp_path / "h" / "vhtool.json").read_text())
    for name, rec in manifest["files"].items():
        assert rec["sha256"] == hashlib.sha256((tmp_path / "h" / name).read_bytes()).hexdigest()
        if rec["how"] == "hardlink":
            assert os.stat(tmp_path / "h" / name).st_ino == os.stat(src / name).st_ino


def test_input_is_never_modified(saved_model: Any, cli: Any, tmp_path: Path) -> None:
    src = saved_model("gpt2", sharded=True)
    snapshot = {p.name: p.read_bytes() for p in src.iterdir()}
    for link in LINKS:
        assert cli("init", src, "-o", tmp_path / link, "--link", link).exit_code == 0
    assert {p.name: p.read_bytes() for p in src.iterdir()} == snapshot
