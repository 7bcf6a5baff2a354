"""``vhtool verify`` / ``verify_checkpoint``: every check passing on real checkpoints, failing on each corruption."""

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

from tests.helpers import TINY_CONFIG, json_error, make_tiny_source, write_header_doc, write_safetensors_raw
from vhtool.checkpoint.safetensors_io import read_header
from vhtool.checkpoint.verify_op import VerifyResult, verify_checkpoint
from vhtool.errors import InputError
from vhtool.models.smoke import verify_forward


def failed(result: VerifyResult) -> dict[str, str]:
    return {c.name: c.detail for c in result.checks if not c.ok}


def set_head_values(ckpt: Path, values: list[float], dtype: str = "F32") -> None:
    """Overwrites ``v_head.summary.weight``'s bytes in place (the file's sha256 then no longer matches)."""
    index = ckpt / "model.safetensors.index.json"
    file = (
        json.loads(index.read_text())["weight_map"]["v_head.summary.weight"] if index.exists() else "model.safetensors"
    )
    hdr = read_header(ckpt / file)
    info = hdr.tensors["v_head.summary.weight"]
    arr = np.array(values, dtype="<f4")
    raw = (arr.view("<u4") >> 16).astype("<u2").tobytes() if dtype == "BF16" else arr.tobytes()
    assert len(raw) == info.nbytes
    with open(ckpt / file, "r+b") as fh:
        fh.seek(hdr.data_start + info.begin)
        fh.write(raw)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def policies(initialised: Callable[..., Path]) -> dict[str, Path]:
    """Policy checkpoints written by ``vhtool init``: single-file gpt2, sharded llama, symlinked llama, t5."""
    return {
        "gpt2": initialised("gpt2"),
        "llama-sharded": initialised("llama", sharded=True),
        "llama-symlink": initialised("llama", link="symlink"),
        "t5": initialised("builtin:tiny-t5"),
    }


@pytest.fixture
def copy_of(policies: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(policies[name], dst, symlinks=True)
        return dst

    return make


# --------------------------------------------------------------------------------------------- passing


@pytest.mark.parametrize("name", ["gpt2", "llama-sharded", "t5"])
def test_verify_passes_on_fresh_policies(policies: dict[str, Path], name: str) -> None:
    result = verify_checkpoint(policies[name])
    assert result.ok, failed(result)
    names = [c.name for c in result.checks]
    assert names[:3] == ["config", "manifest", "layout"]
    assert "value_head" in names and "unlisted files" in names
    assert any(n.startswith("file ") for n in names)
    head = next(c for c in result.checks if c.name == "value_head")
    assert "finite" in head.detail


def test_verify_cli_json_and_table(cli: Callable[..., Any], policies: dict[str, Path]) -> None:
    res = cli("verify", policies["llama-sharded"], "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and doc["failures"] == []
    assert {c["name"] for c in doc["checks"]} >= {
        "config",
        "layout",
        "value_head",
        "file model-value-head.safetensors",
    }
    assert all(set(c) == {"name", "ok", "detail"} for c in doc["checks"])
    res = cli("verify", policies["gpt2"])
    assert res.exit_code == 0
    assert "all 7 checks passed" in res.stdout and "ok    value_head" in res.stdout
    res = cli("verify", policies["gpt2"], "--quiet")
    assert res.exit_code == 0 and res.stdout == ""


def test_symlinked_files_are_hashed_only_with_hash(policies: dict[str, Path]) -> None:
    ckpt = policies["llama-symlink"]
    manifest = json.loads((ckpt / "vhtool.json").read_text())
    linked = [n for n, e in manifest["files"].items() if e["how"] == "symlink"]
    assert linked and all(manifest["files"][n]["sha256"] is None for n in linked)
    plain = verify_checkpoint(ckpt)
    assert plain.ok, failed(plain)
    detail = next(c.detail for c in plain.checks if c.name == f"file {linked[0]}")
    assert "--hash" in detail
    hashed = verify_checkpoint(ckpt, hash_all=True)
    assert hashed.ok and hashed.hashed
    assert "hashed now" in next(c.detail for c in hashed.checks if c.name == f"file {linked[0]}")


def test_dangling_symlink_fails(copy_of: Callable[[str], Path], tmp_path: Path) -> None:
    ckpt = copy_of("llama-symlink")
    name = "model-00001-of-00001.safetensors"
    target = tmp_path / "moved.safetensors"
    shutil.copyfile(ckpt / name, target)
    (ckpt / name).unlink()
    (ckpt / name).symlink_to(tmp_path / "gone.safetensors")
    result = verify_checkpoint(ckpt)
    assert not result.ok
    assert "link target is gone" in failed(result)[f"file {name}"]


# --------------------------------------------------------------------------------------------- not a checkpoint


def test_not_a_checkpoint_exit_2(cli: Callable[..., Any], tmp_path: Path) -> None:
    res = cli("verify", tmp_path / "missing")
    assert res.exit_code == 2 and "no such file or directory" in res.stderr
    (tmp_path / "file.txt").write_text("x")
    res = cli("verify", tmp_path / "file.txt")
    assert res.exit_code == 2 and "not a checkpoint directory" in res.stderr
    (tmp_path / "empty").mkdir()
    res = cli("verify", tmp_path / "empty", "--json")
    assert res.exit_code == 2 and "no config.json" in res.stderr
    assert "no config.json" in json_error(res.stdout, 2)["message"]
    with pytest.raises(InputError):
        verify_checkpoint(tmp_path / "empty")


# --------------------------------------------------------------------------------------------- corruptions (exit 1)


def test_flipped_byte_fails_sha256(cli: Callable[..., Any], copy_of: Callable[[str], Path]) -> None:
    ckpt = copy_of("gpt2")
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    res = cli("verify", ckpt, "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["failures"] == ["file model.safetensors"]
    detail = next(c["detail"] for c in doc["checks"] if c["name"] == "file model.safetensors")
    assert "content changed" in detail
    assert "Error:" in res.stderr and "1 of 7 checks failed" in res.stderr


def test_truncated_file_fails(copy_of: Callable[[str], Path]) -> None:
    ckpt = copy_of("gpt2")
    f = ckpt / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 10)
    bad = failed(verify_checkpoint(ckpt))
    assert "truncated" in bad["layout"]
    assert "size" in bad["file model.safetensors"]
    assert bad["value_head"].startswith("not checked")


def test_missing_and_unlisted_files_fail(copy_of: Callable[[str], Path]) -> None:
    ckpt = copy_of("llama-sharded")
    shard = sorted(p.name for p in ckpt.glob("model-0*.safetensors"))[0]
    (ckpt / shard).unlink()
    (ckpt / "extra.safetensors").write_bytes((ckpt / "model-value-head.safetensors").read_bytes())
    (ckpt / "pytorch_model.bin").write_bytes(b"not really a pickle")
    bad = failed(verify_checkpoint(ckpt))
    assert "missing from the checkpoint" in bad[f"file {shard}"]
    assert "does not exist" in bad["layout"]
    assert "extra.safetensors" in bad["unlisted files"] and "pytorch_model.bin" in bad["unlisted files"]


@pytest.mark.parametrize(
    ("target", "message"),
    [("../../x.safetensors", "not a file inside the checkpoint"), ("/etc/passwd", "not a file inside the checkpoint")],
)
def test_index_pointing_outside_fails(copy_of: Callable[[str], Path], target: str, message: str) -> None:
    ckpt = copy_of("llama-sharded")
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = target
    index_path.write_text(json.dumps(index))
    bad = failed(verify_checkpoint(ckpt))
    assert message in bad["layout"]


def test_index_tensor_twice_or_missing_fails(copy_of: Callable[[str], Path]) -> None:
    ckpt = copy_of("llama-sharded")
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.ghost.weight"] = next(iter(index["weight_map"].values()))
    index_path.write_text(json.dumps(index))
    assert "absent from their files" in failed(verify_checkpoint(ckpt))["layout"]
    # The same tensor stored in two shards.
    del index["weight_map"]["model.ghost.weight"]
    index_path.write_text(json.dumps(index))
    head = ckpt / "model-value-head.safetensors"
    shards = sorted(p for p in ckpt.glob("model-0*.safetensors"))
    hdr = read_header(shards[0])
    name, info = next(iter(hdr.tensors.items()))
    with open(shards[0], "rb") as fh:
        fh.seek(hdr.data_start + info.begin)
        data = fh.read(info.nbytes)
    hh = read_header(head)
    extra = {
        n: (t.dtype, t.shape, head.read_bytes()[hh.data_start + t.begin : hh.data_start + t.end])
        for n, t in hh.tensors.items()
    }
    extra[name] = (info.dtype, info.shape, data)
    write_safetensors_raw(head, extra)
    assert "stored in both" in failed(verify_checkpoint(ckpt))["layout"]


def test_symlink_pointing_outside_fails(copy_of: Callable[[str], Path], tmp_path: Path) -> None:
    ckpt = copy_of("gpt2")
    outside = tmp_path / "outside.safetensors"
    shutil.move(ckpt / "model.safetensors", outside)
    (ckpt / "model.safetensors").symlink_to(outside)
    bad = failed(verify_checkpoint(ckpt))
    assert "points outside the checkpoint" in bad["layout"]
    assert "points outside the checkpoint" in bad["file model.safetensors"]


@pytest.mark.parametrize(
    ("declared", "message"),
    [(10**9, "above the 100000000 byte cap"), (5000, "truncated or corrupt"), (2**64 - 1, "byte cap")],
)
def test_header_length_out_of_bounds_fails(copy_of: Callable[[str], Path], declared: int, message: str) -> None:
    ckpt = copy_of("gpt2")
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = struct.pack("<Q", declared)
    f.write_bytes(bytes(data[:4000]))
    assert message in failed(verify_checkpoint(ckpt))["layout"]


@pytest.mark.parametrize(
    ("offsets", "message"),
    [([[0, 16], [8, 24]], "overlap"), ([[0, 16], [16, 32]], "truncated file"), ([[0, 16], [20, 36]], "gap")],
)
def test_bad_offsets_fail(tmp_path: Path, offsets: list[list[int]], message: str) -> None:
    ckpt = make_tiny_source(tmp_path / "c")
    doc = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": offsets[0]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": offsets[1]},
    }
    write_header_doc(ckpt / "model.safetensors", doc, b"\0" * 24)
    assert message in failed(verify_checkpoint(ckpt))["layout"]


@pytest.mark.parametrize("doc", ["[1, 2]", '"text"', "null", "{not json"])
def test_config_not_an_object_fails(cli: Callable[..., Any], copy_of: Callable[[str], Path], doc: str) -> None:
    ckpt = copy_of("gpt2")
    (ckpt / "config.json").write_text(doc)
    res = cli("verify", ckpt, "--json")
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    assert "config" in out["failures"] and "layout" in out["failures"]
    assert "config.json" in out["checks"][0]["detail"]


@pytest.mark.parametrize(("value", "dtype"), [(float("nan"), "F32"), (float("inf"), "F32"), (float("-inf"), "BF16")])
def test_non_finite_value_head_fails(tmp_path: Path, value: float, dtype: str) -> None:
    head = np.ones(4, "<f4")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(TINY_CONFIG))
    raw = (head.view("<u4") >> 16).astype("<u2").tobytes() if dtype == "BF16" else head.tobytes()
    size = 2 if dtype == "BF16" else 4
    write_safetensors_raw(
        src / "model.safetensors",
        {
            "transformer.wte.weight": ("F32", (8, 4), np.arange(32, dtype="<f4").tobytes()),
            "v_head.summary.weight": (dtype, (1, 4), raw),
            "v_head.summary.bias": (dtype, (1,), b"\0" * size),
        },
    )
    ok = verify_checkpoint(src)
    assert "value_head" not in failed(ok) and f"{dtype}" in next(c.detail for c in ok.checks if c.name == "value_head")
    set_head_values(src, [1.0, value, 2.0, 3.0], dtype=dtype)
    bad = failed(verify_checkpoint(src))
    # the suggestion is an exact command now (issue 15): `vhtool init SRC --reinit-head -o SRC-reinit`
    assert "1 NaN/inf value(s)" in bad["value_head"] and f"vhtool init {src} --reinit-head -o" in bad["value_head"]


def test_value_head_shape_and_absence(copy_of: Callable[[str], Path], saved_model: Callable[..., Path]) -> None:
    ckpt = copy_of("gpt2")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["n_embd"] = 48
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert "expected [1, 48]" in failed(verify_checkpoint(ckpt))["value_head"]
    plain = failed(verify_checkpoint(saved_model("gpt2")))
    # no vhtool.json is no longer a failure (issue 15: save_pretrained checkpoints verify); no value head still is
    assert "manifest" not in plain
    assert "no value head" in plain["value_head"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(files={}), "no 'files' section"),
        (lambda m: m.update(format="other"), "format is 'other'"),
        (lambda m: m["files"]["model.safetensors"].update(size="big"), "not a byte count"),
        (lambda m: m["files"]["model.safetensors"].update(sha256="zz"), "not a hex digest"),
        (lambda m: m["files"].update({"../../etc/passwd": {"size": 1, "sha256": None}}), "not a file inside"),
    ],
)
def test_malformed_manifest_fails(
    copy_of: Callable[[str], Path], edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    ckpt = copy_of("gpt2")
    manifest = json.loads((ckpt / "vhtool.json").read_text())
    edit(manifest)
    (ckpt / "vhtool.json").write_text(json.dumps(manifest))
    result = verify_checkpoint(ckpt)
    assert not result.ok
    assert any(message in c.detail for c in result.failures), failed(result)


# --------------------------------------------------------------------------------------------- reward adapter


@pytest.fixture(scope="module")
def reward_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter of a 1-label GPT-2 sequence classifier (score head saved with it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2ForSequenceClassification

    from tests.helpers import tiny_config

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(tiny_config("gpt2", num_labels=1, pad_token_id=0))
    peft_model = get_peft_model(
        model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    out = tmp_path_factory.mktemp("rm-adapter")
    peft_model.save_pretrained(out)
    return out


def attach_by_hand(ckpt: Path, adapter: Path, subfolder: str = "reward_model_adapter") -> None:
    """Stores ``adapter`` in ``ckpt`` and records it in vhtool.json, as ``attach-reward-adapter`` does."""
    from vhtool.checkpoint.copyio import hash_file

    shutil.copytree(adapter, ckpt / subfolder)
    manifest = json.loads((ckpt / "vhtool.json").read_text())
    files = {p.name: {"size": p.stat().st_size, "sha256": hash_file(p)} for p in sorted((ckpt / subfolder).iterdir())}
    manifest["reward_adapter"] = {"name": "reward_model_adapter", "subfolder": subfolder, "files": files}
    (ckpt / "vhtool.json").write_text(json.dumps(manifest))


def test_reward_adapter_passes_and_fails(copy_of: Callable[[str], Path], reward_adapter_dir: Path) -> None:
    ckpt = copy_of("gpt2")
    attach_by_hand(ckpt, reward_adapter_dir)
    result = verify_checkpoint(ckpt)
    assert result.ok, failed(result)
    ra = next(c for c in result.checks if c.name == "reward_adapter")
    assert "LORA" in ra.detail and "[1, 32]" in ra.detail
    assert any(c.name == "file reward_model_adapter/adapter_model.safetensors" for c in result.checks)

    cfg_path = ckpt / "reward_model_adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["peft_type"]
    cfg_path.write_text(json.dumps(cfg))
    bad = failed(verify_checkpoint(ckpt))
    assert "no peft_type" in bad["reward_adapter"]
    assert "vhtool.json records" in bad["file reward_model_adapter/adapter_config.json"]


def test_reward_adapter_without_score_or_outside(copy_of: Callable[[str], Path], reward_adapter_dir: Path) -> None:
    ckpt = copy_of("gpt2")
    attach_by_hand(ckpt, reward_adapter_dir)
    weights = ckpt / "reward_model_adapter" / "adapter_model.safetensors"
    hdr = read_header(weights)
    kept = {
        n: (t.dtype, t.shape, weights.read_bytes()[hdr.data_start + t.begin : hdr.data_start + t.end])
        for n, t in hdr.tensors.items()
        if "score" not in n
    }
    write_safetensors_raw(weights, kept)
    assert "no score head" in failed(verify_checkpoint(ckpt))["reward_adapter"]
    manifest = json.loads((ckpt / "vhtool.json").read_text())
    manifest["reward_adapter"]["subfolder"] = "../.."
    (ckpt / "vhtool.json").write_text(json.dumps(manifest))
    assert "not a file inside the checkpoint" in failed(verify_checkpoint(ckpt))["reward_adapter"]


# --------------------------------------------------------------------------------------------- --forward


def test_forward_compares_with_local_source(cli: Callable[..., Any], policies: dict[str, Path]) -> None:
    res = cli("verify", policies["gpt2"], "--forward", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["forward"]["ok"] and "values [2, 6]" in checks["forward"]["detail"]
    assert checks["source logits"]["ok"] and checks["source logits"]["detail"].startswith("equal to")


def test_forward_seq2seq_builtin_source(policies: dict[str, Path]) -> None:
    result = verify_forward(verify_checkpoint(policies["t5"]))
    assert result.ok, failed(result)
    assert "tiny-t5" in next(c.detail for c in result.checks if c.name == "source logits")


def test_forward_detects_base_weights_that_differ_from_source(copy_of: Callable[[str], Path]) -> None:
    """A base tensor changed after init (and re-recorded, so file checks pass): logits no longer match the source."""
    from vhtool.checkpoint.copyio import hash_file

    ckpt = copy_of("gpt2")
    f = ckpt / "model.safetensors"
    hdr = read_header(f)
    info = hdr.tensors["transformer.ln_f.bias"]
    with open(f, "r+b") as fh:
        fh.seek(hdr.data_start + info.begin)
        fh.write(np.full(info.numel, 0.5, "<f4").tobytes())
    manifest = json.loads((ckpt / "vhtool.json").read_text())
    manifest["files"]["model.safetensors"]["sha256"] = hash_file(f)
    (ckpt / "vhtool.json").write_text(json.dumps(manifest))
    result = verify_forward(verify_checkpoint(ckpt))
    bad = failed(result)
    assert list(bad) == ["source logits"] and "differ from" in bad["source logits"]


def test_forward_not_run_after_file_failures(copy_of: Callable[[str], Path]) -> None:
    ckpt = copy_of("gpt2")
    set_head_values(ckpt, [float("nan")] * 32)
    bad = failed(verify_forward(verify_checkpoint(ckpt)))
    assert "not run" in bad["forward"]


def test_verify_runs_without_torch(policies: dict[str, Path]) -> None:
    code = (
        "import sys; from vhtool.checkpoint.verify_op import verify_checkpoint; "
        f"r = verify_checkpoint({str(policies['llama-sharded'])!r}, hash_all=True); "
        "assert r.ok; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_symlink_out_of_reward_adapter_fails(
    copy_of: Callable[[str], Path], reward_adapter_dir: Path, tmp_path: Path
) -> None:
    """A link inside the adapter folder that leaves the checkpoint: flagged (push would never upload it)."""
    ckpt = copy_of("gpt2")
    attach_by_hand(ckpt, reward_adapter_dir)
    (tmp_path / "secret.txt").write_text("secret")
    (ckpt / "reward_model_adapter" / "notes.txt").symlink_to(tmp_path / "secret.txt")
    bad = failed(verify_checkpoint(ckpt))
    assert list(bad) == ["links"]
    assert "reward_model_adapter/notes.txt" in bad["links"] and "points outside the checkpoint" in bad["links"]
