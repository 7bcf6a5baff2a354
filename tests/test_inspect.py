"""``vhtool inspect-layers``: header-only inspection, grouping, value-head/adapter checks, diff, Hub, bad input."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tests.helpers import json_error
from vhtool.checkpoint.safetensors_io import build_header, read_header

HIDDEN = 32  # tests/conftest.py tiny models


# --------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ckpts(initialised: Callable[..., Path]) -> dict[tuple[str, bool], Path]:
    """Policy checkpoints written by ``vhtool init`` for gpt2, llama and t5, single-file and sharded."""
    return {
        (arch, sharded): initialised(arch, sharded=sharded)
        for arch in ("gpt2", "llama", "t5")
        for sharded in (False, True)
    }


def run_json(cli: Callable[..., Any], *args: Any) -> dict[str, Any]:
    result = cli("inspect-layers", *args, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert result.stdout.count("\n") == 1  # exactly one JSON object, nothing else on stdout
    return doc


def safetensors_truth(directory: Path) -> dict[str, tuple[list[int], str, str]]:
    """name -> (shape, dtype, file) for every top-level *.safetensors file, as the safetensors library reports it."""
    truth: dict[str, tuple[list[int], str, str]] = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(f, "np") as fh:
            for k in fh.keys():  # noqa: SIM118  (the safetensors API the issue names)
                sl = fh.get_slice(k)
                truth[k] = (list(sl.get_shape()), sl.get_dtype(), f.name)
    return truth


def copy_raw(saved_model: Callable[..., Path], tmp_path: Path, arch: str = "gpt2") -> Path:
    dst = tmp_path / f"raw-{arch}"
    shutil.copytree(saved_model(arch), dst)
    return dst


def add_tensors(directory: Path, extra: dict[str, np.ndarray], file: str = "model.safetensors") -> None:
    """Rewrites ``file`` with ``extra`` tensors added (or replaced)."""
    path = directory / file
    tensors = load_file(path) if path.exists() else {}
    tensors.update(extra)
    save_file(tensors, path, metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------- contents


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_json_tensors_equal_safetensors(cli: Callable[..., Any], ckpts: Any, arch: str, sharded: bool) -> None:
    d = ckpts[(arch, sharded)]
    doc = run_json(cli, d)
    truth = safetensors_truth(d)
    got = {t["name"]: (t["shape"], t["dtype"], t["file"]) for t in doc["tensors"]}
    assert got == truth
    assert doc["schema_version"] == 1 and doc["mode"] == "inspect"
    assert doc["layout"] == ("sharded" if sharded else "single-file")
    assert doc["role"] == "policy"
    # groups partition the tensors; totals add up; per-dtype totals add up
    assert sum(g["tensors"] for g in doc["groups"]) == len(doc["tensors"]) == doc["totals"]["tensors"]
    assert sum(g["params"] for g in doc["groups"]) == doc["totals"]["params"]
    assert sum(t["bytes"] for t in doc["tensors"]) == doc["totals"]["bytes"]
    assert sum(v["params"] for v in doc["totals"]["by_dtype"].values()) == doc["totals"]["params"]
    for t in doc["tensors"]:
        assert t["params"] == int(np.prod(t["shape"], dtype=np.int64))
    assert doc["value_head"]["ok"] and doc["value_head"]["convention"] == "vhtool"


def test_block_grouping_per_architecture(cli: Callable[..., Any], ckpts: Any) -> None:
    gpt2 = run_json(cli, ckpts[("gpt2", False)])
    assert gpt2["containers"] == [{"prefix": "transformer.h", "num_blocks": 2}]
    kinds = [g["kind"] for g in gpt2["groups"]]
    assert kinds == ["embeddings", "block", "block", "final_norm", "lm_head", "value_head"]
    assert [g["label"] for g in gpt2["groups"] if g["kind"] == "block"] == ["transformer.h.0", "transformer.h.1"]
    emb = next(g for g in gpt2["groups"] if g["kind"] == "embeddings")
    assert "tied" in emb["marks"]  # GPT-2 ties its LM head: no lm_head tensor, a virtual tied row
    lm = next(g for g in gpt2["groups"] if g["kind"] == "lm_head")
    assert lm["tensors"] == 0 and lm["marks"] == ["tied"]
    tied = [t["name"] for t in gpt2["tensors"] if "tied" in t["marks"]]
    assert tied == ["transformer.wte.weight"]

    llama = run_json(cli, ckpts[("llama", True)])
    assert llama["containers"] == [{"prefix": "model.layers", "num_blocks": 2}]
    names = {g["kind"]: g for g in llama["groups"]}
    assert names["lm_head"]["tensors"] == 1 and "tied" not in names["embeddings"]["marks"]
    assert names["final_norm"]["tensors"] == 1
    block0 = next(g for g in llama["groups"] if g["label"] == "model.layers.0")
    assert block0["tensors"] == 9 and block0["index"] == 0 and block0["container"] == "model.layers"

    t5 = run_json(cli, ckpts[("t5", False)])
    assert [c["prefix"] for c in t5["containers"]] == ["encoder.block", "decoder.block"]
    labels = [g["label"] for g in t5["groups"] if g["kind"] == "block"]
    assert labels == ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]
    t5_final = next(g for g in t5["groups"] if g["kind"] == "final_norm")
    assert t5_final["tensors"] == 2  # encoder and decoder final layer norms


def test_human_table(cli: Callable[..., Any], ckpts: Any) -> None:
    result = cli("inspect-layers", ckpts[("llama", False)])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for label in ("embeddings", "model.layers.0", "model.layers.1", "final norm", "LM head", "value head"):
        assert label in out
    assert "Value head: vhtool/TRL inline" in out and "[ok]" in out
    assert "Total:" in out


def test_filter_and_tensors(cli: Callable[..., Any], ckpts: Any) -> None:
    d = ckpts[("gpt2", True)]
    doc = run_json(cli, d, "--filter", "transformer.h.1.*")
    assert doc["filter"] == "transformer.h.1.*"
    assert doc["tensors"] and all(t["name"].startswith("transformer.h.1.") for t in doc["tensors"])
    assert [g["label"] for g in doc["groups"]] == ["transformer.h.1"]
    truth = {k for k in safetensors_truth(d) if k.startswith("transformer.h.1.")}
    assert {t["name"] for t in doc["tensors"]} == truth
    assert doc["totals"]["params"] == sum(t["params"] for t in doc["tensors"])
    assert doc["value_head"]["ok"]  # the check sees every tensor, whatever the filter

    result = cli("inspect-layers", d, "--tensors")
    assert result.exit_code == 0, result.stderr
    for name in safetensors_truth(d):
        assert name in result.stdout


def test_markup_in_names_is_escaped(cli: Callable[..., Any], saved_model: Callable[..., Path], tmp_path: Path) -> None:
    d = copy_raw(saved_model, tmp_path)
    weird = "extra.[bold]x[/bold].[v_head]"
    add_tensors(d, {weird: np.zeros((2,), dtype=np.float32)})
    result = cli("inspect-layers", d, "--tensors")
    assert result.exit_code == 0, result.stderr
    assert weird in result.stdout.replace("\n", "").replace(" ", "").replace("│", "")
    doc = run_json(cli, d)
    assert next(g for g in doc["groups"] if g["kind"] == "other")["tensors"] == 1


# --------------------------------------------------------------------------------------------------- value head


def test_require_value_head_passes(cli: Callable[..., Any], ckpts: Any) -> None:
    result = cli("inspect-layers", ckpts[("t5", True)], "--require-value-head", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""


def test_require_value_head_missing(cli: Callable[..., Any], saved_model: Callable[..., Path]) -> None:
    result = cli("inspect-layers", saved_model("gpt2"), "--require-value-head")
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "no value head found" in result.stderr
    assert "Value head: none found" in result.stdout  # the report is still printed
    doc = json.loads(cli("inspect-layers", saved_model("gpt2"), "--json", "--require-value-head").stdout)
    assert doc["value_head"]["found"] is False and doc["value_head"]["ok"] is False


@pytest.mark.parametrize(
    ("weight", "bias", "message"),
    [
        (np.zeros((2, HIDDEN), np.float32), np.zeros((1,), np.float32), f"is [2, {HIDDEN}], expected [1, {HIDDEN}]"),
        (np.zeros((1, HIDDEN), np.int32), np.zeros((1,), np.float32), "has dtype I32"),
        (np.zeros((1, HIDDEN + 1), np.float16), np.zeros((1,), np.float16), f"expected [1, {HIDDEN}]"),
        (np.zeros((1, HIDDEN), np.float32), np.zeros((3,), np.float32), "v_head.summary.bias is [3], expected [1]"),
    ],
    ids=["two-outputs", "int-dtype", "wrong-width", "bad-bias"],
)
def test_require_value_head_bad_heads(
    cli: Callable[..., Any],
    saved_model: Callable[..., Path],
    tmp_path: Path,
    weight: np.ndarray,
    bias: np.ndarray,
    message: str,
) -> None:
    d = copy_raw(saved_model, tmp_path)
    add_tensors(d, {"v_head.summary.weight": weight, "v_head.summary.bias": bias})
    result = cli("inspect-layers", d, "--require-value-head", "--json")
    assert result.exit_code == 1
    assert message in result.stderr
    doc = json.loads(result.stdout)
    assert doc["value_head"]["found"] and not doc["value_head"]["ok"]
    assert any(message in p for p in doc["value_head"]["problems"])
    assert cli("inspect-layers", d).exit_code == 0  # without --require-value-head it only reports


@pytest.mark.parametrize("convention", ["vhtool", "sidecar", "score", "value_head"])
def test_convention_detection(
    cli: Callable[..., Any], saved_model: Callable[..., Path], tmp_path: Path, convention: str
) -> None:
    d = copy_raw(saved_model, tmp_path)
    w = np.full((1, HIDDEN), 0.5, np.float32)
    b = np.zeros((1,), np.float32)
    if convention == "vhtool":
        add_tensors(d, {"v_head.summary.weight": w, "v_head.summary.bias": b})
    elif convention == "sidecar":
        save_file({"v_head.summary.weight": w, "v_head.summary.bias": b}, d / "value_head.safetensors")
    elif convention == "score":
        add_tensors(d, {"score.weight": w})
    else:
        add_tensors(d, {"value_head.weight": w, "value_head.bias": b})
    doc = run_json(cli, d, "--require-value-head")
    vh = doc["value_head"]
    assert vh["convention"] == convention and vh["ok"]
    heads = [
        t for t in doc["tensors"] if next(g for g in doc["groups"] if g["id"] == t["group"])["kind"] == "value_head"
    ]
    assert {t["name"] for t in heads} >= {vh["heads"][0]["weight"]}
    if convention == "sidecar":
        assert all(t["file"] == "value_head.safetensors" and "sidecar" in t["marks"] for t in heads)
    human = cli("inspect-layers", d)
    expected = {
        "vhtool": "vhtool/TRL inline",
        "sidecar": "sidecar (v_head.summary.* in value_head.safetensors)",
        "score": "sequence-classification head (score.weight)",
        "value_head": "critic head (value_head.weight",
    }[convention]
    assert f"Value head: {expected}" in human.stdout


# --------------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("listed", [True, False], ids=["shared_tensors", "pattern"])
def test_reference_marks(cli: Callable[..., Any], ckpts: Any, tmp_path: Path, listed: bool) -> None:
    d = tmp_path / "ref"
    shutil.copytree(ckpts[("gpt2", False)], d)
    manifest = json.loads((d / "vhtool.json").read_text())
    manifest["role"] = "reference"
    names = safetensors_truth(d)
    shared = sorted(n for n in names if n.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0.")))
    manifest["reference"] = {"shared_layers": 1, "pattern": "transformer.h.{layer}", "num_blocks": 2}
    if listed:
        manifest["reference"]["shared_tensors"] = ["pretrained_model." + n for n in shared]
    (d / "vhtool.json").write_text(json.dumps(manifest))
    doc = run_json(cli, d)
    assert doc["role"] == "reference"
    assert doc["reference"]["shared_layers"] == 1 and doc["reference"]["shared_tensors"] == len(shared)
    by_label = {g["label"]: g for g in doc["groups"]}
    assert "shared" in by_label["embeddings"]["marks"] and "shared" in by_label["transformer.h.0"]["marks"]
    assert "shared" not in by_label["transformer.h.1"]["marks"]
    assert all("frozen" in g["marks"] for g in doc["groups"] if g["tensors"])
    assert sorted(t["name"] for t in doc["tensors"] if "shared" in t["marks"]) == shared
    human = cli("inspect-layers", d)
    assert f"Reference: frozen; shares {len(shared)} tensors" in human.stdout


# --------------------------------------------------------------------------------------------------- reward adapter


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA reward adapter (SEQ_CLS, num_labels=1) for the tiny GPT-2 of conftest."""
    import peft
    import torch
    import transformers as tf

    from tests.helpers import tiny_config

    cfg = tiny_config("gpt2")
    cfg.num_labels = 1
    cfg.pad_token_id = 0
    torch.manual_seed(0)
    model = tf.AutoModelForSequenceClassification.from_config(cfg)
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["c_attn"])
    d = tmp_path_factory.mktemp("adapter")
    peft.get_peft_model(model, lora).save_pretrained(d)
    return d


def with_adapter(ckpts: Any, adapter: Path, tmp_path: Path, *, record: bool = True) -> Path:
    d = tmp_path / "with-adapter"
    shutil.copytree(ckpts[("gpt2", False)], d)
    shutil.copytree(adapter, d / "reward_model_adapter")
    if record:
        manifest = json.loads((d / "vhtool.json").read_text())
        manifest["reward_adapter"] = {"name": "reward_model_adapter", "subfolder": "reward_model_adapter"}
        (d / "vhtool.json").write_text(json.dumps(manifest))
    return d


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "default-subfolder"])
def test_reward_adapter(cli: Callable[..., Any], ckpts: Any, peft_adapter: Path, tmp_path: Path, record: bool) -> None:
    d = with_adapter(ckpts, peft_adapter, tmp_path, record=record)
    doc = run_json(cli, d, "--require-reward-adapter", "--require-value-head")
    ra = doc["reward_adapter"]
    assert ra["ok"] and ra["recorded"] is record and ra["peft_type"] == "LORA" and ra["r"] == 4
    assert ra["score"] == {"name": "base_model.model.score.weight", "shape": [1, HIDDEN], "dtype": "F32"}
    with safe_open(d / "reward_model_adapter" / "adapter_model.safetensors", "np") as fh:
        keys = set(fh.keys())
        lora_keys = {k for k in keys if ".lora_" in k}
    assert ra["lora_tensors"] == len(lora_keys)
    adapter_rows = [t for t in doc["tensors"] if t["part"] == "reward_adapter"]
    assert {t["name"] for t in adapter_rows} == keys
    assert all(t["file"] == "reward_model_adapter/adapter_model.safetensors" for t in adapter_rows)
    groups = {g["id"]: g for g in doc["groups"]}
    assert groups["reward_adapter:lora"]["marks"] == ["lora"] and groups["reward_adapter:lora"]["tensors"] == len(
        lora_keys
    )
    assert groups["reward_adapter:score"]["marks"] == ["score"]
    human = cli("inspect-layers", d)
    assert "Reward adapter: reward_model_adapter (reward_model_adapter/): LORA r=4 on c_attn, score [1, 32] F32" in (
        human.stdout
    )


def test_require_reward_adapter_missing(cli: Callable[..., Any], ckpts: Any) -> None:
    result = cli("inspect-layers", ckpts[("gpt2", False)], "--require-reward-adapter", "--quiet")
    assert result.exit_code == 1
    assert "no reward adapter" in result.stderr and "attach-reward-adapter" in result.stderr


@pytest.mark.parametrize("defect", ["score-shape", "no-score", "no-weights", "not-recorded-folder"])
def test_require_reward_adapter_malformed(
    cli: Callable[..., Any], ckpts: Any, peft_adapter: Path, tmp_path: Path, defect: str
) -> None:
    d = with_adapter(ckpts, peft_adapter, tmp_path)
    weights = d / "reward_model_adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    if defect == "score-shape":
        tensors["base_model.model.score.weight"] = np.zeros((2, HIDDEN), np.float32)
        save_file(tensors, weights)
        message = f"expected [1, {HIDDEN}]"
    elif defect == "no-score":
        del tensors["base_model.model.score.weight"]
        save_file(tensors, weights)
        message = "carries no score head"
    elif defect == "no-weights":
        weights.unlink()
        message = "adapter_model.safetensors is missing"
    else:
        manifest = json.loads((d / "vhtool.json").read_text())
        manifest["reward_adapter"] = {"name": "rm", "subfolder": "rm"}
        (d / "vhtool.json").write_text(json.dumps(manifest))
        message = "subfolder rm/ is missing"
    result = cli("inspect-layers", d, "--require-reward-adapter", "--json")
    assert result.exit_code == 1
    assert message in result.stderr
    doc = json.loads(result.stdout)
    assert doc["reward_adapter"]["ok"] is False and any(message in p for p in doc["reward_adapter"]["problems"])


def test_adapter_subfolder_outside_checkpoint_is_refused(cli: Callable[..., Any], ckpts: Any, tmp_path: Path) -> None:
    d = tmp_path / "evil"
    shutil.copytree(ckpts[("gpt2", False)], d)
    manifest = json.loads((d / "vhtool.json").read_text())
    manifest["reward_adapter"] = {"name": "x", "subfolder": "../elsewhere"}
    (d / "vhtool.json").write_text(json.dumps(manifest))
    result = cli("inspect-layers", d)
    assert result.exit_code == 2
    assert "not a file inside the checkpoint" in result.stderr


# --------------------------------------------------------------------------------------------------- diff


def flip_tensor_bytes(directory: Path, name: str) -> None:
    """Changes one tensor's bytes in place (same header)."""
    for f in directory.glob("*.safetensors"):
        hdr = read_header(f)
        if name in hdr.tensors:
            t = hdr.tensors[name]
            with open(f, "r+b") as fh:
                fh.seek(hdr.data_start + t.begin)
                data = bytearray(fh.read(t.nbytes))
                data[0] ^= 0xFF
                fh.seek(hdr.data_start + t.begin)
                fh.write(data)
            return
    raise AssertionError(name)


def test_diff_headers_and_hash(cli: Callable[..., Any], ckpts: Any, tmp_path: Path) -> None:
    a = ckpts[("llama", True)]
    b = tmp_path / "b"
    shutil.copytree(a, b)
    target = "model.layers.1.mlp.up_proj.weight"
    flip_tensor_bytes(b, target)
    doc = run_json(cli, a, "--diff", b)
    assert doc["mode"] == "diff" and doc["identical"] is True and doc["bytes_differ"] is None
    assert doc["compared"] == len(safetensors_truth(a))
    hashed = run_json(cli, a, "--diff", b, "--hash")
    assert hashed["bytes_differ"] == [target] and hashed["identical"] is False
    assert hashed["hashed_bytes"] == 2 * sum(
        int(np.prod(s, dtype=np.int64)) * (2 if d in ("BF16", "F16") else 4)
        for s, d, _ in safetensors_truth(a).values()
    )
    same = run_json(cli, a, "--diff", a, "--hash")
    assert same["identical"] is True and same["bytes_differ"] == []
    human = cli("inspect-layers", a, "--diff", b, "--hash")
    assert f"# bytes differ: {target}" in human.stdout and "-> different" in human.stdout
    filtered = run_json(cli, a, "--diff", b, "--hash", "--filter", "model.layers.0.*")
    assert filtered["identical"] and filtered["compared"] == 9


def test_diff_names_shapes_dtypes(cli: Callable[..., Any], saved_model: Callable[..., Path], tmp_path: Path) -> None:
    a = copy_raw(saved_model, tmp_path / "a")
    b = copy_raw(saved_model, tmp_path / "b")
    tensors = load_file(b / "model.safetensors")
    del tensors["transformer.h.0.ln_1.bias"]
    tensors["transformer.h.1.ln_1.bias"] = tensors["transformer.h.1.ln_1.bias"].astype(np.float16)
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:64]
    tensors["v_head.summary.weight"] = np.zeros((1, HIDDEN), np.float32)
    save_file(tensors, b / "model.safetensors", metadata={"format": "pt"})
    doc = run_json(cli, a, "--diff", b)
    assert [t["name"] for t in doc["only_in_a"]] == ["transformer.h.0.ln_1.bias"]
    assert [t["name"] for t in doc["only_in_b"]] == ["v_head.summary.weight"]
    changed = {c["name"]: c for c in doc["changed"]}
    assert set(changed) == {"transformer.h.1.ln_1.bias", "transformer.wpe.weight"}
    assert changed["transformer.h.1.ln_1.bias"]["b"]["dtype"] == "F16"
    assert changed["transformer.wpe.weight"]["b"]["shape"][0] == 64
    assert doc["identical"] is False


def test_hash_without_diff_is_usage_error(cli: Callable[..., Any], ckpts: Any) -> None:
    result = cli("inspect-layers", ckpts[("gpt2", False)], "--hash")
    assert result.exit_code == 2 and "use it with --diff" in result.stderr


# --------------------------------------------------------------------------------------------------- header-only


def test_importing_the_cli_does_not_load_torch() -> None:
    code = (
        "import sys, vhtool.cli.app, vhtool.checkpoint.inspect, vhtool.cli.inspect_cmd; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'huggingface_hub') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and "transformers" not in out
    assert out.strip() == "[]"


def test_command_in_subprocess_does_not_load_torch(ckpts: Any) -> None:
    code = (
        "import sys\nfrom vhtool.cli.app import app\n"
        "try:\n    app([sys.argv[1], sys.argv[2], '--json'])\n"
        "except SystemExit as e:\n    assert e.code in (0, None)\n"
        "sys.stderr.write('LOADED:' + ','.join(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "inspect-layers", str(ckpts[("llama", True)])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["value_head"]["ok"]
    assert proc.stderr.strip().endswith("LOADED:")


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_never_reads_tensor_data(cli: Callable[..., Any], tmp_path: Path) -> None:
    """A 4 GiB sparse data region (holes, never written) is inspected while reading only kilobytes."""
    d = tmp_path / "sparse"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32768, "vocab_size": 32768}))
    items = [("model.embed_tokens.weight", "BF16", (32768, 32768), 32768 * 32768 * 2)]
    items += [("v_head.summary.weight", "F32", (1, 32768), 4 * 32768), ("v_head.summary.bias", "F32", (1,), 4)]
    header, _ = build_header(items)
    with open(d / "model.safetensors", "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + sum(i[3] for i in items))
    before = _rchar()
    doc = run_json(cli, d, "--require-value-head")
    read = _rchar() - before
    assert doc["totals"]["bytes"] == sum(i[3] for i in items) and doc["value_head"]["ok"]
    assert read < 2_000_000, read  # the data region is 2 GiB; a few KB of headers and JSON were read


def test_garbage_data_region_is_irrelevant(cli: Callable[..., Any], ckpts: Any, tmp_path: Path) -> None:
    a = ckpts[("gpt2", False)]
    d = tmp_path / "garbage"
    shutil.copytree(a, d)
    hdr = read_header(d / "model.safetensors")
    with open(d / "model.safetensors", "r+b") as fh:
        fh.seek(hdr.data_start)
        fh.write(b"\xff" * hdr.data_size)  # NaN-ish garbage everywhere, header intact
    ga, gd = run_json(cli, a), run_json(cli, d)
    assert ga["tensors"] == gd["tensors"] and ga["groups"] == gd["groups"] and ga["totals"] == gd["totals"]


# --------------------------------------------------------------------------------------------------- bad input


def _single_file_ckpt(tmp_path: Path, payload: bytes) -> Path:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    (d / "model.safetensors").write_bytes(payload)
    return d


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-path", "no such file or directory"),
        ("empty-dir", "not a checkpoint (no config.json)"),
        ("a-file", "not a checkpoint directory"),
        ("no-weights", "not a checkpoint (no model.safetensors"),
        ("truncated-header", "truncated safetensors file"),
        ("header-longer-than-file", "safetensors header declares 4096 bytes but the file has only"),
        ("non-json-header", "safetensors header is not valid JSON"),
        ("missing-shard", "the index names 'model-00002-of-00002.safetensors', which does not exist"),
        ("bad-config", "config.json is not valid JSON"),
        ("revision-on-local", "--revision applies to Hub ids"),
    ],
)
def test_bad_input_exit_2(cli: Callable[..., Any], ckpts: Any, tmp_path: Path, case: str, message: str) -> None:
    extra: list[str] = []
    if case == "missing-path":
        target = tmp_path / "nope" / "x"
    elif case == "empty-dir":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "a-file":
        target = tmp_path / "file.txt"
        target.write_text("hello")
    elif case == "no-weights":
        target = tmp_path / "noweights"
        target.mkdir()
        (target / "config.json").write_text("{}")
    elif case == "truncated-header":
        target = _single_file_ckpt(tmp_path, b"\x10\x00\x00")
    elif case == "header-longer-than-file":
        target = _single_file_ckpt(tmp_path, struct.pack("<Q", 4096) + b'{"a": 1}')
    elif case == "non-json-header":
        body = b"this is not json"
        target = _single_file_ckpt(tmp_path, struct.pack("<Q", len(body)) + body)
    elif case == "missing-shard":
        target = tmp_path / "shards"
        shutil.copytree(ckpts[("llama", False)], target)
        names = list(safetensors_truth(target))
        index = {"metadata": {}, "weight_map": {n: "model-00001-of-00002.safetensors" for n in names}}
        index["weight_map"][names[-1]] = "model-00002-of-00002.safetensors"
        (target / "model.safetensors").rename(target / "model-00001-of-00002.safetensors")
        (target / "model.safetensors.index.json").write_text(json.dumps(index))
    elif case == "bad-config":
        target = tmp_path / "badcfg"
        shutil.copytree(ckpts[("gpt2", False)], target)
        (target / "config.json").write_text("{not json")
    else:
        target = ckpts[("gpt2", False)]
        extra = ["--revision", "main"]
    result = cli("inspect-layers", target, *extra, "--json")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in json_error(result.stdout, 2)["message"]  # one JSON object: the error, nothing half-written
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_id_offline_is_exit_2(cli: Callable[..., Any]) -> None:
    result = cli("inspect-layers", "someone/not-cached-model", "--json")
    assert result.exit_code == 2
    assert "offline" in result.stderr and "hf download someone/not-cached-model" in result.stderr


# --------------------------------------------------------------------------------------------------- Hub


def test_hub_repo_through_range_reads(
    cli: Callable[..., Any],
    ckpts: Any,
    peft_adapter: Path,
    tmp_path: Path,
    hub_server: Any,  # noqa: F811
) -> None:
    from huggingface_hub import HfApi

    local = with_adapter(ckpts, peft_adapter, tmp_path)
    save_file(
        {
            "v_head.summary.weight": np.zeros((1, HIDDEN), np.float32),
            "v_head.summary.bias": np.zeros((1,), np.float32),
        },
        local / "value_head.safetensors",
    )
    api = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    repo = api.create_repo("tester/inspect-me").repo_id
    api.upload_folder(repo_id=repo, folder_path=str(local))
    hub_server.clear_requests()

    remote = run_json(cli, repo, "--require-value-head", "--require-reward-adapter")
    here = run_json(cli, local)
    assert remote["source"]["kind"] == "hub" and remote["source"]["commit"]
    assert remote["tensors"] == here["tensors"]
    assert remote["groups"] == here["groups"] and remote["totals"] == here["totals"]
    assert remote["value_head"]["heads"] == here["value_head"]["heads"]
    assert remote["reward_adapter"] == here["reward_adapter"]
    # headers only: every GET of a weight file is a Range request
    gets = [r for r in hub_server.find_requests(method="GET") if r.path.endswith(".safetensors")]
    assert gets and all("range" in r.headers for r in gets)

    sharded = ckpts[("llama", True)]
    repo2 = api.create_repo("tester/sharded").repo_id
    api.upload_folder(repo_id=repo2, folder_path=str(sharded))
    remote2 = run_json(cli, repo2)
    assert {t["name"]: (t["shape"], t["dtype"], t["file"]) for t in remote2["tensors"]} == safetensors_truth(sharded)
    assert remote2["layout"] == "sharded"

    missing = cli("inspect-layers", "tester/does-not-exist")
    assert missing.exit_code == 2 and "no such model on the Hub" in missing.stderr


# --------------------------------------------------------------------------------------------------- real producers


def test_outputs_of_make_reference_and_attach_reward_adapter(
    cli: Callable[..., Any], ckpts: Any, peft_adapter: Path, tmp_path: Path
) -> None:
    """The checkpoints the other commands write inspect exactly as safetensors reads them, with their marks."""
    policy = ckpts[("gpt2", False)]
    ref = tmp_path / "ref"
    made = cli("make-reference", policy, "--shared-layers", "1", "-o", ref, "--quiet")
    assert made.exit_code == 0, made.stderr
    doc = run_json(cli, ref)
    assert {t["name"]: (t["shape"], t["dtype"], t["file"]) for t in doc["tensors"]} == safetensors_truth(ref)
    by_label = {g["label"]: g for g in doc["groups"]}
    assert doc["role"] == "reference"
    assert "shared" in by_label["transformer.h.0"]["marks"] and "shared" not in by_label["transformer.h.1"]["marks"]
    assert "shared" in by_label["embeddings"]["marks"] and "frozen" in by_label["transformer.h.1"]["marks"]

    scored = tmp_path / "scored"
    attached = cli("attach-reward-adapter", policy, peft_adapter, "-o", scored, "--quiet")
    assert attached.exit_code == 0, attached.stderr
    doc = run_json(cli, scored, "--require-reward-adapter", "--require-value-head")
    ra = doc["reward_adapter"]
    assert ra["recorded"] and ra["ok"] and ra["score"]["shape"] == [1, HIDDEN]
    sub = scored / ra["subfolder"]
    with safe_open(sub / "adapter_model.safetensors", "np") as fh:
        keys = set(fh.keys())  # noqa: SIM118
    assert {t["name"] for t in doc["tensors"] if t["part"] == "reward_adapter"} == keys


def test_hub_offline_reads_the_cache_and_bad_repos_exit_2(
    cli: Callable[..., Any],
    ckpts: Any,
    tmp_path: Path,
    hub_server: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import HfApi, constants, snapshot_download

    api = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    repo = api.create_repo("tester/cached").repo_id
    api.upload_folder(repo_id=repo, folder_path=str(ckpts[("t5", False)]))
    empty = api.create_repo("tester/no-weights").repo_id
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=empty)
    result = cli("inspect-layers", empty)
    assert result.exit_code == 2 and "not a checkpoint" in result.stderr

    snapshot_download(repo)  # what `hf download` leaves in the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_server.clear_requests()
    doc = run_json(cli, repo)
    assert hub_server.requests == []  # offline: no request at all
    assert doc["source"]["kind"] == "hub" and doc["notes"] == ["offline: read from the local Hugging Face cache"]
    assert {t["name"]: (t["shape"], t["dtype"], t["file"]) for t in doc["tensors"]} == safetensors_truth(
        ckpts[("t5", False)]
    )
    gone = cli("inspect-layers", "tester/never-downloaded")
    assert gone.exit_code == 2 and "offline" in gone.stderr


# --------------------------------------------------------------------------------------------------- schema golden

GOLDEN = Path(__file__).parent / "golden"


def skeleton(value: Any) -> Any:
    """The shape of a JSON document: keys kept, lists reduced to their first item, scalars to type names."""
    if isinstance(value, dict):
        return {k: skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [skeleton(value[0])] if value else []
    return type(value).__name__


def check_golden(name: str, doc: dict[str, Any]) -> None:
    """Compares with tests/golden/<name>; VHTOOL_UPDATE_GOLDEN=1 rewrites it (review the diff, bump schema_version)."""
    import os

    path = GOLDEN / name
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if os.environ.get("VHTOOL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{name}: the --json schema changed; update docs/inspect-schema.md"


def test_json_schema_is_stable(cli: Callable[..., Any], ckpts: Any, peft_adapter: Path, tmp_path: Path) -> None:
    d = with_adapter(ckpts, peft_adapter, tmp_path)
    manifest = json.loads((d / "vhtool.json").read_text())
    manifest["role"] = "reference"
    manifest["reference"] = {"shared_layers": 1, "pattern": "transformer.h.{layer}", "num_blocks": 2}
    (d / "vhtool.json").write_text(json.dumps(manifest))
    doc = run_json(cli, d)
    assert doc["schema_version"] == 1
    check_golden("inspect_schema.json", skeleton(doc))
    b = tmp_path / "b"
    shutil.copytree(ckpts[("gpt2", False)], b)
    tensors = load_file(b / "model.safetensors")
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"].astype(np.float16)
    tensors["extra.weight"] = np.ones((2, 2), np.float32)
    tensors["transformer.h.0.ln_1.weight"] = tensors["transformer.h.0.ln_1.weight"] + 1
    save_file(tensors, b / "model.safetensors", metadata={"format": "pt"})
    diff = run_json(cli, d, "--diff", b, "--hash")
    assert diff["bytes_differ"] == ["transformer.h.0.ln_1.weight"] and diff["changed"] and diff["only_in_b"]
    check_golden("inspect_diff_schema.json", skeleton(diff))
