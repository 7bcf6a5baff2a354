"""The typed ``vhtool.json``: every manifest the commands write round-trips byte for byte; types are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from vhtool.checkpoint.manifest import (
    FileEntry,
    Manifest,
    RewardAdapterInfo,
    SourceInfo,
    manifest_text,
    read_manifest,
    write_manifest,
)
from vhtool.errors import CheckpointError


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One output directory per command and variant that writes a ``vhtool.json``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, GPT2ForSequenceClassification

    from vhtool.checkpoint.attach_op import attach_reward_adapter
    from vhtool.checkpoint.convert import convert_checkpoint
    from vhtool.checkpoint.init_op import HeadSpec, init_checkpoint
    from vhtool.checkpoint.reference_op import make_reference
    from vhtool.hub import resolve_source

    root = tmp_path_factory.mktemp("manifests")
    gpt2 = resolve_source("builtin:tiny-gpt2")
    t5 = resolve_source("builtin:tiny-t5")
    out = {name: root / name for name in ("single", "sharded", "t5", "ref", "ref-full", "seq-cls", "sidecar", "back")}
    init_checkpoint(
        gpt2.path, out["single"], head=HeadSpec(strategy="normal", seed=3), source=gpt2.record(), durable=False
    )
    init_checkpoint(gpt2.path, out["sharded"], head=HeadSpec(), source=gpt2.record(), link="hardlink", durable=False)
    init_checkpoint(t5.path, out["t5"], head=HeadSpec(), source=t5.record(), durable=False)
    make_reference(out["single"], out["ref"], shared_layers=1, durable=False)
    make_reference(out["sharded"], out["ref-full"], shared_layers=None, durable=False)
    convert_checkpoint(out["single"], out["seq-cls"], to="seq-cls", durable=False)
    convert_checkpoint(out["sharded"], out["sidecar"], to="sidecar", durable=False)
    convert_checkpoint(out["seq-cls"], out["back"], to="vhtool", durable=False)

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(gpt2.path)
    cfg.num_labels, cfg.pad_token_id = 1, 0
    lora = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    adapter = root / "adapter"
    get_peft_model(GPT2ForSequenceClassification(cfg), lora).save_pretrained(adapter)
    out["attached"] = root / "attached"
    attach_reward_adapter(out["single"], adapter, out["attached"], durable=False)
    bare = root / "bare"
    shutil.copytree(out["single"], bare)
    (bare / "vhtool.json").unlink()
    out["attached-bare"] = root / "attached-bare"
    attach_reward_adapter(bare, adapter, out["attached-bare"], adapter_name="rm", durable=False)
    out["ref-bare"] = root / "ref-bare"
    make_reference(bare, out["ref-bare"], shared_layers=1, durable=False)
    return out


KINDS = ["single", "sharded", "t5", "ref", "ref-full", "seq-cls", "sidecar", "back", "attached", "attached-bare"]


@pytest.mark.parametrize("kind", [*KINDS, "ref-bare"])
def test_every_written_manifest_round_trips_byte_for_byte(written: dict[str, Path], kind: str, tmp_path: Path) -> None:
    text = (written[kind] / "vhtool.json").read_text(encoding="utf-8")
    manifest = Manifest.from_json(json.loads(text))
    assert manifest_text(manifest) == text
    write_manifest(tmp_path, manifest)  # stamping the same version changes nothing
    assert (tmp_path / "vhtool.json").read_text(encoding="utf-8") == text
    assert read_manifest(written[kind] / "vhtool.json") == manifest


def test_typed_fields_of_written_manifests(written: dict[str, Path]) -> None:
    single = read_manifest(written["single"] / "vhtool.json")
    assert single.role == "policy" and single.architecture == "causal" and single.layout == "single-file"
    vh = single.value_head
    assert vh is not None and vh.seed == 3 and vh.init_strategy == "normal" and vh.hidden_size is not None
    assert single.source == SourceInfo(model="builtin:tiny-gpt2", kind="builtin")
    assert all(isinstance(e, FileEntry) and e.sha256 for e in single.files.values())
    sharded = read_manifest(written["sharded"] / "vhtool.json")
    assert sharded.symlinked_files == set() and {e.how for e in sharded.files.values()} == {"hardlink", "write"}
    ref = read_manifest(written["ref"] / "vhtool.json")
    assert ref.role == "reference" and ref.reference is not None and ref.reference.shared_layers == 1
    assert ref.reference.policy is not None and set(ref.reference.policy.files or {}) == set(single.files)
    full = read_manifest(written["ref-full"] / "vhtool.json")
    assert full.reference is not None and full.reference.shared_layers is None
    assert '"shared_layers": null' in (written["ref-full"] / "vhtool.json").read_text()
    attached = read_manifest(written["attached"] / "vhtool.json")
    ra = attached.reward_adapter
    assert (
        ra is not None and ra.name == ra.subfolder == "reward_model_adapter" and ra.score_shape == (1, vh.hidden_size)
    )
    assert ra.files is not None and set(ra.files) >= {"adapter_config.json", "adapter_model.safetensors"}
    conv = read_manifest(written["seq-cls"] / "vhtool.json")
    assert conv.conversion is not None and conv.conversion.source == "vhtool" and conv.conversion.target == "seq-cls"
    assert conv.source is not None and conv.source.origin == single.source


def test_unknown_keys_are_kept_at_every_level(written: dict[str, Path]) -> None:
    doc = json.loads((written["attached"] / "vhtool.json").read_text())
    doc["future_section"] = {"a": [1, 2]}
    doc["source"]["mirror"] = "somewhere"
    doc["value_head"]["activation"] = "tanh"
    doc["reward_adapter"]["trained_with"] = "trl"
    doc["reward_adapter"]["source"]["token_hint"] = None
    name = next(iter(doc["files"]))
    doc["files"][name]["mtime"] = 5
    manifest = Manifest.from_json(doc)
    assert manifest.extra == {"future_section": {"a": [1, 2]}}
    assert manifest.reward_adapter is not None and manifest.reward_adapter.extra == {"trained_with": "trl"}
    assert json.loads(manifest_text(manifest)) == doc
    assert manifest_text(manifest) == json.dumps(doc, indent=2, sort_keys=True) + "\n"


def test_unknown_keys_survive_make_reference_and_attach(written: dict[str, Path], tmp_path: Path) -> None:
    from vhtool.checkpoint.reference_op import make_reference

    policy = tmp_path / "policy"
    shutil.copytree(written["single"], policy)
    doc = json.loads((policy / "vhtool.json").read_text())
    doc["future_section"] = {"kept": True}
    doc["value_head"]["activation"] = "tanh"
    (policy / "vhtool.json").write_text(json.dumps(doc))
    make_reference(policy, tmp_path / "ref", shared_layers=1, durable=False)
    out = json.loads((tmp_path / "ref" / "vhtool.json").read_text())
    assert out["future_section"] == {"kept": True} and out["value_head"]["activation"] == "tanh"
    assert "reward_adapter" not in out


def test_hand_written_nulls_and_absences_round_trip() -> None:
    doc: dict[str, Any] = {
        "role": "policy",
        "files": {"model.safetensors": {"size": 3}},
        "reward_adapter": {"name": "rm", "subfolder": None, "files": ["adapter_config.json"]},
        "reference": {"pattern": "h.{layer}"},
    }
    manifest = Manifest.from_json(doc)
    assert manifest.format is None and manifest.files["model.safetensors"].sha256 is None
    assert manifest.reward_adapter == RewardAdapterInfo(
        name="rm", files={"adapter_config.json": None}, files_listed=True
    )
    assert manifest.to_json() == doc


def test_replace_drops_a_section_set_to_none(written: dict[str, Path]) -> None:
    attached = read_manifest(written["attached"] / "vhtool.json")
    assert "reward_adapter" not in attached.replace(reward_adapter=None).to_json()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(role=5), "role must be a string"),
        (lambda m: m.update(format_version="1"), "format_version must be an integer"),
        (lambda m: m.update(files=[]), "files must be an object"),
        (lambda m: m["files"]["model.safetensors"].update(size=True), "is not a byte count"),
        (lambda m: m["files"]["model.safetensors"].update(sha256="zz"), "is not a hex digest"),
        (lambda m: m["files"].update(x="big"), "its record is not an object"),
        (lambda m: m.update(source="builtin:tiny-gpt2"), "source must be an object"),
        (lambda m: m["source"].update(revision=3), "source.revision must be a string"),
        (lambda m: m["value_head"].update(seed=1.5), "value_head.seed must be an integer"),
        (lambda m: m["value_head"].update(initializer_range="0.2"), "value_head.initializer_range must be a number"),
        (lambda m: m["value_head"].update(tensors="v_head"), "value_head.tensors must be a list of strings"),
        (lambda m: m.update(reference={"shared_layers": "2"}), "reference.shared_layers must be an integer"),
        (lambda m: m.update(reference={"frozen": "yes"}), "reference.frozen must be true or false"),
        (lambda m: m.update(reference={"policy": {"files": {"a": 1}}}), "reference.policy.files must map"),
        (lambda m: m.update(reward_adapter=[]), "reward_adapter must be an object"),
        (lambda m: m.update(reward_adapter={"name": 1}), "reward_adapter.name must be a string"),
        (lambda m: m.update(reward_adapter={"files": 3}), "reward_adapter.files is neither a mapping nor a list"),
        (lambda m: m.update(reward_adapter={"files": [7]}), "must be a file name or an object"),
        (lambda m: m.update(reward_adapter={"score_shape": [1, "h"]}), "score_shape must be a list of integers"),
        (lambda m: m.update(conversion={"lost": "lm_head"}), "conversion.lost must be a list of strings"),
        (lambda m: m.update(normalization=[1]), "normalization must be an object"),
    ],
)
def test_wrong_types_are_rejected(written: dict[str, Path], edit: Any, message: str) -> None:
    doc = json.loads((written["single"] / "vhtool.json").read_text())
    edit(doc)
    with pytest.raises(CheckpointError, match="vhtool.json") as err:
        Manifest.from_json(doc)
    assert message in str(err.value)


def test_not_an_object_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        Manifest.from_json([1])


def test_malformed_manifest_is_a_clean_input_error(written: dict[str, Path], tmp_path: Path, cli: Any) -> None:
    d = tmp_path / "ckpt"
    shutil.copytree(written["single"], d)
    doc = json.loads((d / "vhtool.json").read_text())
    doc["role"] = ["policy"]
    (d / "vhtool.json").write_text(json.dumps(doc))
    result = cli("inspect-layers", d)
    assert result.exit_code == 2 and "role must be a string" in result.stderr
