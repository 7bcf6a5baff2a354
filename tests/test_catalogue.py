"""The one catalogue of checkpoint files: each question answered for the names that matter."""

from __future__ import annotations

import pytest

from vhtool.checkpoint import catalogue as cat
from vhtool.checkpoint.catalogue import Kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.safetensors", Kind.WEIGHTS),
        ("model-00001-of-00005.safetensors", Kind.WEIGHTS),
        ("model-value-head.safetensors", Kind.WEIGHTS),
        ("consolidated.safetensors", Kind.WEIGHTS),
        ("value_head.safetensors", Kind.WEIGHTS),
        ("model.safetensors.index.json", Kind.INDEX),
        ("pytorch_model.bin", Kind.PICKLE),
        ("pytorch_model.bin.index.json", Kind.PICKLE),
        ("config.json", Kind.CONFIG),
        ("generation_config.json", Kind.CONFIG),
        ("tokenizer.json", Kind.TOKENIZER),
        ("qwen.tiktoken", Kind.TOKENIZER),
        ("vhtool.json", Kind.MANIFEST),
        ("README.md", Kind.CARD),
        ("adapter_config.json", Kind.ADAPTER),
        ("LICENSE.txt", Kind.AUXILIARY),
        ("preprocessor_config.json", Kind.AUXILIARY),
        ("training_args.bin", Kind.TRAINING),
        ("builtin.json", Kind.INTERNAL),
        ("train.py", None),
        ("data.jsonl", None),
        ("notes.txt", None),
        (".git", None),
        (".model.safetensors.vhtool-tmp", None),
    ],
)
def test_kind_of(name: str, kind: Kind | None) -> None:
    assert cat.kind_of(name) is kind


def test_init_copies_what_force_may_replace() -> None:
    """Point 6 of issue 20: what init copies is always something --force may replace afterwards."""
    for name in ("config.json", "tokenizer.json", "LICENSE.txt", "preprocessor_config.json", "merges.txt"):
        assert cat.init_copies(name) and cat.force_may_replace(name)
    for name in ("model.safetensors", "vhtool.json", "README.md", "pytorch_model.bin", "builtin.json", "x.py"):
        assert not cat.init_copies(name)
    assert not cat.force_may_replace("train.py") and not cat.force_may_replace(".git")


def test_push_publishes_no_pickles_or_markers() -> None:
    assert cat.push_publishes("model.safetensors") and cat.push_publishes("LICENSE")
    never = ("pytorch_model.bin", "adapter_model.bin", "training_args.bin", "builtin.json", "notes.txt")
    never += (".gitattributes",)
    for name in never:
        assert not cat.push_publishes(name)


def test_push_deletes_only_its_own_files_or_the_other_half_of_a_switch() -> None:
    """Point 3 of issue 20: files vhtool did not publish stay on the Hub."""
    for other in ("consolidated.safetensors", "model.fp16.safetensors", "onnx/model.onnx", "original/params.json"):
        assert not cat.push_may_delete(other, published_before=None, local_sharded=False)
        assert not cat.push_may_delete(other, published_before=["model.safetensors"], local_sharded=True)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    # sharded -> single file: the remote index and the shards it names go
    assert cat.push_may_delete(cat.INDEX_FILE, published_before=None, local_sharded=False)
    assert cat.push_may_delete(shards[0], published_before=None, local_sharded=False, remote_index_names=shards)
    # single file -> sharded: the remote single file goes
    assert cat.push_may_delete("model.safetensors", published_before=None, local_sharded=True)
    # what vhtool published before and no longer has goes
    assert cat.push_may_delete(
        "reward_model_adapter/adapter_config.json",
        published_before=["reward_model_adapter/adapter_config.json"],
        local_sharded=False,
    )


def test_save_supersedes_weights_not_tokenizer() -> None:
    for name in (
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "value_head.safetensors",
        "adapter_model.safetensors",
    ):
        assert cat.save_supersedes(name)
    for name in ("tokenizer.json", "config.json", "vhtool.json", "consolidated.safetensors"):
        assert not cat.save_supersedes(name)


def test_hub_reads_what_the_index_names() -> None:
    """Point 9 of issue 20: never consolidated.safetensors, original/ or onnx/."""
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    names = cat.hub_weight_names(index=index)
    assert names[:2] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert "model.safetensors" not in names and "consolidated.safetensors" not in names
    assert cat.hub_weight_names(index=None)[0] == "model.safetensors"
    meta = cat.hub_metadata_names()
    assert "config.json" in meta and not any(n.startswith(("original/", "onnx/")) or n == "*.json" for n in meta)


def test_adapter_copies_keep_the_subfolder_replaceable() -> None:
    """attach-reward-adapter copies from a trainer's folder only what --force may replace in an adapter subfolder."""
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json", "LICENSE"):
        assert cat.adapter_copies(name) and cat.adapter_folder_may_hold(name)
    for name in ("adapter_model.bin", "training_args.bin", "train.py", ".gitattributes", "optimizer.pt"):
        assert not cat.adapter_copies(name)


def test_remote_code_modules_travel_but_scripts_do_not() -> None:
    for name in ("modeling_qwen.py", "configuration_qwen.py", "tokenization_qwen.py"):
        assert cat.kind_of(name) is Kind.AUXILIARY and cat.init_copies(name) and cat.force_may_replace(name)
    for name in ("train.py", "eval.py", "run_modeling.py"):
        assert cat.kind_of(name) is None and not cat.init_copies(name)
