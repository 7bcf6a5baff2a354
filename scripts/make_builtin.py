#!/usr/bin/env python
# mypy: disable-error-code="no-untyped-call"
"""Build the tiny built-in checkpoints shipped inside ``vhtool/builtin/``.

Each built-in model is an ordinary ``transformers`` checkpoint directory (what ``save_pretrained`` writes for the
model and its tokenizer, with the chat template kept in ``tokenizer_config.json`` and a portable
``tokenizer_class``) plus a small ``builtin.json`` descriptor. The checkpoints are randomly
initialised, tiny (well under 1 MB each) and only meant for offline smoke tests, demos and CI.

Everything here is deterministic: the tokenizers are trained on the fixed corpus below with parallelism disabled,
the weights come from ``torch.manual_seed(0)``, and nothing time- or path-dependent is written. Running the script
twice (with the same library versions) yields byte-identical files; ``--check`` verifies that the shipped files
match a fresh build, leaving out the ``transformers_version`` stamps that only say which release wrote a JSON file
(so a new transformers release does not fail the check when nothing else changed).

Tokenizer choices:

* ``tiny-gpt2``: byte-level BPE (GPT-2 pre-tokenizer regex, no prefix space), ``<|endoftext|>`` (id 0) is
  bos/eos/unk and also the pad token, right padding, no special tokens added when encoding.
* ``tiny-llama``: byte-level BPE, ``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3, left padding, ``<s>`` prepended
  when encoding, and a small Jinja chat template (``<|role|>`` headers, turns terminated by ``</s>``).
* ``tiny-t5``: SentencePiece-style BPE over whitespace-split, ``▁``-prefixed words (like T5 tokenizers):
  ``<pad>``=0, ``</s>``=1, ``<unk>``=2, right padding, ``</s>`` appended when encoding, ``decoder_start_token_id``
  = 0. (A Unigram model would be closer to T5, but the ``tokenizers`` Unigram trainer is not reproducible.)

Byte-level BPE round-trips any text exactly. The T5 alphabet covers all printable ASCII, so plain ASCII text with
single spaces round-trips exactly too; other characters become ``<unk>`` and runs of whitespace collapse to one
space, as with real T5 tokenizers.

Usage::

    python scripts/make_builtin.py            # (re)write vhtool/builtin/<name>/
    python scripts/make_builtin.py --out DIR  # write DIR/<name>/ instead
    python scripts/make_builtin.py --check    # build in a temp dir and compare with the shipped files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import string
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Must be set before the Rust tokenizers library spins up its thread pool: single-threaded training is
# deterministic (parallel reductions over floats / hash maps are not guaranteed to be).
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "vhtool" / "builtin"
MAX_LENGTH = 512
SEED = 0

# A few KB of original English text (written for this project, free to use) with varied vocabulary, digits and
# punctuation. Changing it changes every shipped tokenizer and model, so treat it as frozen.
CORPUS = """\
Reinforcement learning from human feedback (RLHF) fine-tunes a language model with a learned reward signal.
First, people compare pairs of answers to the same prompt and mark the one they prefer. A reward model is then
trained on those comparisons: given a prompt and a completion, it returns a single number, and preferred answers
should score higher than rejected ones. Finally, the policy is optimised against the reward model, usually with
PPO, while a KL penalty keeps it close to the reference model so that it does not drift into strange text.
A value head is a small linear layer on top of the transformer's hidden states. It predicts the expected return
at every token, which PPO uses to compute advantages. Checkpoints saved during training often contain the base
model weights plus the value head weights, e.g. "v_head.summary.weight" and "v_head.summary.bias".
Typical settings: learning rate 1e-5, batch size 64, 4 PPO epochs, clip range 0.2, KL coefficient 0.05.

The lighthouse keeper woke before dawn, as he had done for thirty-one years. He climbed the 117 steps of the
tower, wiped the salt from the great lens, and watched the grey sea turn silver, then blue. Far out, a fishing
boat was heading home; its engine coughed twice and went quiet. "Not again," he muttered, reaching for the old
brass telescope. The boat drifted slowly toward the rocks north of the harbour. He rang the bell, three long
strokes and one short, and somewhere below a door banged open. By half past six the little rescue boat was on
the water, and by seven the fishermen were drinking tea in his kitchen, laughing about the weather.

In the spring the village held a market in the square. There were baskets of apples and pears, jars of honey,
loaves of dark bread, wool in twelve colours, and a man who sharpened knives while telling jokes nobody quite
understood. Children ran between the stalls; dogs followed them, hoping for crumbs. An old woman sold maps of
places that did not exist, and she swore every one of them was accurate. Prices were written in chalk: 3 for
a pound, 50p each, 2.75 a kilo. At noon the clock struck twelve, and everyone paused to listen.

How do you measure whether a model is helpful? You might ask it questions, read its answers carefully, and
count the mistakes. You might check whether it follows instructions, whether it refuses harmful requests, and
whether it admits when it does not know. None of these measures is perfect; each one captures only part of what
we mean by "good". That is why evaluation is hard, and why people keep arguing about it!

Q: What is 12 + 30?
A: 42.
Q: Name three primary colours.
A: Red, yellow and blue.
Q: Is the Earth flat?
A: No; it is very nearly a sphere, slightly wider at the equator than from pole to pole.

Numbers and symbols: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 -7 +12 50% 1/2 #1 @home $20 & co. (a) [b] {c}
x = y * 2; if (x > 10) { return x - 1; } else { return x + 1; } // comment
name_with_underscores, path/to/file.txt, user@example.com, https://example.org/page?id=7&lang=en
Emphasis *like this*, `code spans`, ~tilde~, ^caret^, back\\slash, pipe | bar, quotes 'single' and "double".

She opened the letter with trembling hands. It said only: "Come at once. Bring the blue notebook." There was no
signature, but she knew the handwriting. Within an hour she had packed a bag, locked the house, and caught the
last train east. Outside the window the fields went by, dark and wet, and the rain drew long lines across the
glass. She did not sleep. At every station she looked at the faces on the platform, wondering which of them had
been sent to follow her, and wondering, too, whether the notebook was worth all this trouble.

Good data matters more than clever tricks. Clean the prompts, remove duplicates, balance the topics, and keep a
held-out set that nobody looks at until the very end. Write down every decision. When a result looks too good to
be true, it usually is: check for leakage, check the random seed, and run it again.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick daft
zebras jump! Sphinx of black quartz, judge my vow. Waltz, bad nymph, for quick jigs vex.
"""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

DESCRIPTIONS = {
    "tiny-gpt2": (
        "Randomly initialised 2-layer GPT-2 (n_embd 64) with a byte-level BPE tokenizer and right padding; for "
        "tests and demos."
    ),
    "tiny-llama": (
        "Randomly initialised 2-layer Llama (hidden 64, GQA 4/2 heads) with a byte-level BPE tokenizer, left "
        "padding and a chat template; for tests and demos."
    ),
    "tiny-t5": (
        "Randomly initialised 2+2-layer T5 encoder-decoder (d_model 64) with a SentencePiece-style BPE "
        "tokenizer; for tests and demos."
    ),
}


def _corpus_lines() -> Iterator[str]:
    """Yield the training corpus one non-empty line at a time.

    Yields:
        Lines of :data:`CORPUS` (paragraph breaks dropped).
    """
    for line in CORPUS.splitlines():
        if line.strip():
            yield line


def _byte_level_bpe(vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE tokenizer on the corpus.

    Args:
        vocab_size: Target vocabulary size (special tokens and the 256 byte symbols included).
        special_tokens: Special tokens, which get ids ``0..len(special_tokens) - 1`` in order.

    Returns:
        The trained (not yet post-processed) tokenizer.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    return tok


def build_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """Build the ``tiny-gpt2`` tokenizer.

    Returns:
        Byte-level BPE tokenizer with ``<|endoftext|>`` as bos/eos/unk/pad and right padding.
    """
    eot = "<|endoftext|>"
    tok = _byte_level_bpe(768, [eot])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=eot,
        eos_token=eot,
        unk_token=eot,
        pad_token=eot,
        padding_side="right",
        model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )


def build_llama_tokenizer() -> PreTrainedTokenizerFast:
    """Build the ``tiny-llama`` tokenizer.

    Returns:
        Byte-level BPE tokenizer with ``<unk>``/``<s>``/``</s>``/``<pad>`` = 0/1/2/3, ``<s>`` prepended, left
        padding and :data:`CHAT_TEMPLATE`.
    """
    tok = _byte_level_bpe(768, ["<unk>", "<s>", "</s>", "<pad>"])
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", bos_id)]),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def build_t5_tokenizer() -> PreTrainedTokenizerFast:
    """Build the ``tiny-t5`` tokenizer.

    A SentencePiece-style BPE over ``▁``-prefixed words (tokenizers' Unigram trainer is not reproducible across
    processes, BPE is).

    Returns:
        Metaspace BPE tokenizer with ``<pad>``/``</s>``/``<unk>`` = 0/1/2, ``</s>`` appended and right padding.
    """
    specials = ["<pad>", "</s>", "<unk>"]
    alphabet = sorted(set(string.printable) - set(string.whitespace)) + ["▁"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    eos_id = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )


def _ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int | None]:
    """Collect the special token ids of a tokenizer.

    Args:
        tokenizer: The tokenizer.

    Returns:
        ``bos``/``eos``/``pad``/``unk`` ids (``None`` where the tokenizer has no such token).
    """
    return {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id,
    }


def build_gpt2_model(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """Build the ``tiny-gpt2`` model.

    Args:
        tokenizer: Its tokenizer (vocabulary size and special ids are taken from it).

    Returns:
        A randomly initialised float32 ``GPT2LMHeadModel``.
    """
    ids = _ids(tokenizer)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=MAX_LENGTH,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    return model


def build_llama_model(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """Build the ``tiny-llama`` model.

    Args:
        tokenizer: Its tokenizer (vocabulary size and special ids are taken from it).

    Returns:
        A randomly initialised float32 ``LlamaForCausalLM`` with untied embeddings.
    """
    ids = _ids(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_LENGTH,
        tie_word_embeddings=False,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    return model


def build_t5_model(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """Build the ``tiny-t5`` model.

    Args:
        tokenizer: Its tokenizer (vocabulary size and special ids are taken from it).

    Returns:
        A randomly initialised float32 ``T5ForConditionalGeneration`` (decoder starts from the pad id, 0).
    """
    ids = _ids(tokenizer)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=ids["pad"],
        eos_token_id=ids["eos"],
    )
    config.decoder_start_token_id = ids["pad"]
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["eos"], pad_token_id=ids["pad"], decoder_start_token_id=ids["pad"]
    )
    return model


BUILDERS: dict[str, tuple[str, Callable[[], PreTrainedTokenizerFast], Callable[[Any], PreTrainedModel]]] = {
    "tiny-gpt2": ("causal", build_gpt2_tokenizer, build_gpt2_model),
    "tiny-llama": ("causal", build_llama_tokenizer, build_llama_model),
    "tiny-t5": ("seq2seq", build_t5_tokenizer, build_t5_model),
}


def _check_consistency(name: str, tokenizer: PreTrainedTokenizerFast, model: PreTrainedModel) -> None:
    """Assert that config, generation config and tokenizer agree on vocabulary size and special ids.

    Args:
        name: Built-in name (for error messages).
        tokenizer: The tokenizer.
        model: The model.

    Raises:
        AssertionError: On any mismatch.
    """
    ids = _ids(tokenizer)
    cfg, gen = model.config, model.generation_config
    assert cfg.vocab_size == len(tokenizer), name
    for key in ("eos", "pad") + (("bos",) if ids["bos"] is not None else ()):
        assert getattr(cfg, f"{key}_token_id") == ids[key], (name, key)
        assert getattr(gen, f"{key}_token_id") == ids[key], (name, key)


def _portable_tokenizer_class(path: Path) -> None:
    """Record ``PreTrainedTokenizerFast`` instead of ``TokenizersBackend`` as the tokenizer class.

    transformers 5 writes its new ``TokenizersBackend`` class name, which transformers 4 cannot resolve; the old name
    resolves to the same class in transformers 5, so the rewritten file loads identically there and also loads in
    transformers 4. This is the only change made to what ``save_pretrained`` writes.

    Args:
        path: The ``tokenizer_config.json`` to rewrite in place (same JSON formatting as transformers uses).
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build_one(name: str, out_dir: Path) -> None:
    """Build one built-in checkpoint into ``out_dir`` (which must not exist yet).

    Args:
        name: Built-in name, a key of :data:`BUILDERS`.
        out_dir: Target directory.
    """
    architecture, make_tokenizer, make_model = BUILDERS[name]
    tokenizer = make_tokenizer()
    model = make_model(tokenizer)
    model.eval()
    _check_consistency(name, tokenizer, model)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    # Keep the chat template inside tokenizer_config.json (readable by older transformers too) instead of a
    # separate chat_template.jinja.
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    _portable_tokenizer_class(out_dir / "tokenizer_config.json")
    meta = {"name": name, "architecture": architecture, "description": DESCRIPTIONS[name]}
    (out_dir / "builtin.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for path in out_dir.iterdir():
        path.chmod(0o644)  # some writers create 0600 files; ship uniform permissions


def build_all(out_root: Path) -> dict[str, Path]:
    """Build every built-in into ``out_root/<name>/``, replacing existing checkpoint directories.

    Each checkpoint is first written to a temporary sibling directory and then moved into place, so a failure never
    leaves a half-written checkpoint behind. Other files in ``out_root`` (e.g. ``__init__.py``) are left alone.

    Args:
        out_root: Directory that receives one sub-directory per built-in.

    Returns:
        Mapping from built-in name to the written directory.
    """
    out_root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in BUILDERS:
        target = out_root / name
        with tempfile.TemporaryDirectory(dir=out_root, prefix=f".{name}-") as tmp:
            staging = Path(tmp) / name
            build_one(name, staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        written[name] = target
    return written


def digest_tree(root: Path) -> dict[str, str]:
    """Hash every file below ``root``.

    Args:
        root: Directory to hash.

    Returns:
        Mapping from POSIX relative path to sha256 hex digest, sorted by path.
    """
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(comparable_bytes(p)).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


#: Keys that record which library version wrote a file, not what the file means: a new transformers release
#: changes them and nothing else, so ``--check`` leaves them out of the comparison.
VERSION_STAMPS = ("transformers_version",)


def comparable_bytes(path: Path) -> bytes:
    """The bytes ``--check`` compares: a JSON object without its library version stamps, other files as they are.

    Args:
        path: A file of a built-in checkpoint.

    Returns:
        The file's bytes, or for a JSON object its canonical form without :data:`VERSION_STAMPS`.
    """
    raw = path.read_bytes()
    if path.suffix != ".json":
        return raw
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        return raw
    for key in VERSION_STAMPS:
        doc.pop(key, None)
    return json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit status (``1`` when ``--check`` finds a difference).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: vhtool/builtin)")
    parser.add_argument("--check", action="store_true", help="build in a temp dir and compare with --out")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = build_all(Path(tmp))
            ok = True
            for name, path in fresh.items():
                want, have = digest_tree(path), digest_tree(args.out / name) if (args.out / name).is_dir() else {}
                for rel in sorted(set(want) | set(have)):
                    if want.get(rel) != have.get(rel):
                        ok = False
                        print(f"DIFFERS: {name}/{rel}", file=sys.stderr)
            print("up to date" if ok else "out of date: run scripts/make_builtin.py")
            return 0 if ok else 1

    for name, path in build_all(args.out).items():
        size = sum(p.stat().st_size for p in path.iterdir())
        print(f"{name}: {path} ({size / 1024:.0f} KiB)")
        for rel, digest in digest_tree(path).items():
            print(f"  {digest}  {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
