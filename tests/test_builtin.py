"""Tests for the built-in tiny checkpoints shipped in ``vhtool/builtin/``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase

from vhtool.builtin import BUILTIN_PREFIX, builtin_info, builtin_path, is_builtin, list_builtin

NAMES = ["tiny-gpt2", "tiny-llama", "tiny-t5"]
EXPECTED_FILES = {"builtin.json", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}

# Plain ASCII sentences that do not occur in the tokenizer training corpus.
SENTENCES = [
    "Seventeen purple owls debated philosophy under a crooked bridge.",
    "Why would anyone pay $9.99 for a 3-pack of socks? (Asked twice, at 4:15pm.)",
    "The Zebra_Kayak#42 won; qwerty [v2] {ok} <done> ~fin~",
]
BATCH = ["Hello there, my friend.", "A second, considerably longer sentence that forces some padding!"]


def _tokenizer(name: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(builtin_path(name))


def test_list_builtin() -> None:
    assert list_builtin() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_builtin_path_accepts_prefix(name: str) -> None:
    path = builtin_path(name)
    assert path == builtin_path(BUILTIN_PREFIX + name)
    assert path.is_dir()
    assert {p.name for p in path.iterdir()} >= EXPECTED_FILES


@pytest.mark.parametrize("bad", ["tiny-gpt3", "builtin:nope", "", "builtin:"])
def test_unknown_name_raises_key_error(bad: str) -> None:
    with pytest.raises(KeyError, match="tiny-gpt2"):
        builtin_path(bad)


def test_is_builtin() -> None:
    assert is_builtin("builtin:tiny-gpt2")
    assert not is_builtin("tiny-gpt2")
    assert not is_builtin("./builtin/tiny-gpt2")


@pytest.mark.parametrize("name", NAMES)
def test_builtin_info(name: str) -> None:
    info = builtin_info(name)
    assert info["name"] == name
    assert info["architecture"] == ("seq2seq" if name == "tiny-t5" else "causal")
    assert info["description"]


@pytest.mark.parametrize("name", NAMES)
def test_files_are_small_and_single_safetensors(name: str) -> None:
    path = builtin_path(name)
    assert sum(p.stat().st_size for p in path.iterdir()) < 1_200_000
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        assert all(fh.get_slice(k).get_dtype() == "F32" for k in fh.keys())  # noqa: SIM118 (not a dict)


@pytest.mark.parametrize("name", NAMES)
def test_special_ids_consistent(name: str) -> None:
    path = builtin_path(name)
    tok = _tokenizer(name)
    config = json.loads((path / "config.json").read_text())
    gen = json.loads((path / "generation_config.json").read_text())
    assert config["vocab_size"] == len(tok)
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    for key in ("pad", "eos", "bos"):
        ids = {getattr(tok, f"{key}_token_id"), config.get(f"{key}_token_id"), gen.get(f"{key}_token_id")}
        assert len(ids) == 1, (key, ids)
    if name == "tiny-t5":
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
        assert config["decoder_start_token_id"] == gen["decoder_start_token_id"] == 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", SENTENCES)
def test_tokenizer_round_trip(name: str, text: str) -> None:
    tok = _tokenizer(name)
    ids = tok.encode(text)
    assert tok.unk_token_id not in ids or name == "tiny-gpt2"  # gpt2: unk == eos, never produced by BPE
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize(
    ("name", "side", "bos_first", "eos_last"),
    [("tiny-gpt2", "right", False, False), ("tiny-llama", "left", True, False), ("tiny-t5", "right", False, True)],
)
def test_tokenizer_special_tokens_and_padding(name: str, side: str, bos_first: bool, eos_last: bool) -> None:
    tok = _tokenizer(name)
    assert tok.padding_side == side
    single = tok("Hello world.")["input_ids"]
    assert (single[0] == tok.bos_token_id) is bos_first
    assert (single[-1] == tok.eos_token_id) is eos_last
    batch = tok(BATCH, padding=True)
    short, long_ = batch["attention_mask"]
    assert all(long_) and not all(short)
    assert short[0 if side == "right" else -1] == 1
    assert short[-1 if side == "right" else 0] == 0


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_on_padded_batch(name: str) -> None:
    path = builtin_path(name)
    tok = _tokenizer(name)
    enc = tok(BATCH, padding=True, return_tensors="pt")
    with torch.no_grad():
        if builtin_info(name)["architecture"] == "seq2seq":
            model = AutoModelForSeq2SeqLM.from_pretrained(path)
            labels = tok(["Yes.", "No, not really."], padding=True, return_tensors="pt")["input_ids"]
            out = model(**enc, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels))
            expected = (2, labels.shape[1], len(tok))
        else:
            model = AutoModelForCausalLM.from_pretrained(path)
            out = model(**enc)
            expected = (2, enc["input_ids"].shape[1], len(tok))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tuple(out.logits.shape) == expected
    assert torch.isfinite(out.logits).all()


def test_llama_chat_template() -> None:
    tok = _tokenizer("tiny-llama")
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<s><|user|>\nWhat is 2 + 2?</s>\n<|assistant|>\nIt is 4.</s>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nWhat is 2 + 2?</s>\n<|assistant|>\n"
    assert text.startswith(prompt)
    encoded = tok.apply_chat_template(messages, tokenize=True, return_dict=True)
    assert not isinstance(encoded, (str, list))
    ids: list[int] = encoded["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids) == text


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, vhtool.builtin as b; b.builtin_path('tiny-gpt2'); b.builtin_info('tiny-t5');"
        "heavy = [m for m in ('torch', 'transformers', 'safetensors', 'tokenizers') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_make_builtin_check_ignores_the_transformers_version_stamp(tmp_path: Path) -> None:
    """A new release changes only ``transformers_version``: ``--check`` still passes; a real change fails."""
    repo = Path(__file__).resolve().parents[1]
    shipped = repo / "vhtool" / "builtin"
    out = tmp_path / "builtin"
    import shutil

    for name in NAMES:
        shutil.copytree(shipped / name, out / name)
    for rel in ("tiny-gpt2/config.json", "tiny-llama/generation_config.json"):
        doc = json.loads((out / rel).read_text())
        doc["transformers_version"] = "99.0.0"
        (out / rel).write_text(json.dumps(doc, indent=2) + "\n")
    script = [sys.executable, str(repo / "scripts" / "make_builtin.py"), "--check", "--out", str(out)]
    res = subprocess.run(script, capture_output=True, text=True)
    assert res.returncode == 0 and "up to date" in res.stdout, res.stderr

    doc = json.loads((out / "tiny-gpt2" / "config.json").read_text())
    doc["n_layer"] = doc["n_layer"] + 1  # a change of meaning is still found
    (out / "tiny-gpt2" / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    res = subprocess.run(script, capture_output=True, text=True)
    assert res.returncode == 1 and "DIFFERS: tiny-gpt2/config.json" in res.stderr
