"""``vhtool score`` reads plain transformers classifiers: a seq-cls reward model, a token-cls critic.

The reference is transformers itself: ``AutoModelForSequenceClassification``'s logits (read at the rightmost
token that is not the config's pad id) and ``AutoModelForTokenClassification``'s logits at the last token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer
from typer.testing import CliRunner

from vhtool.cli.app import app
from vhtool.hub import resolve_source
from vhtool.models.scoring import ScoreOptions, Scorer

TEXTS = [
    "hello there",
    "the quick brown fox jumps over the lazy dog while seven wizards quietly hex every jovial knight",
    "a",
    "good night",
    "seven wizards",
]


def make_classifier(builtin: str, out: Path, *, kind: str = "seq-cls", num_labels: int = 1, seed: int = 0) -> Path:
    """A transformers classifier saved by ``save_pretrained`` from a built-in's backbone, with a seeded random head."""
    src = resolve_source(f"builtin:{builtin}").path
    cls = AutoModelForSequenceClassification if kind == "seq-cls" else AutoModelForTokenClassification
    torch.manual_seed(seed)
    model = cls.from_pretrained(src, num_labels=num_labels)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def seqcls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seqcls")
    return {name: make_classifier(name, root / name) for name in ("tiny-gpt2", "tiny-llama")}


def _texts_with_eos(tok: Any) -> list[str]:
    # a text ending in the eos (OpenRLHF appends it; GPT-2's pad is its eos): transformers reads before it
    return [*TEXTS, "good night" + tok.eos_token]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_seqcls_scores_equal_transformers_logits(name: str, seqcls: dict[str, Path]) -> None:
    path = seqcls[name]
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = _texts_with_eos(tok)
    scorer = Scorer(path, options=ScoreOptions(device="cpu"))
    assert (scorer.classifier, scorer.head) == ("seq-cls", "reward")
    seqs = [tok(t)["input_ids"] for t in texts]
    batched, _ = scorer.score_batch(seqs)  # one padded batch, whatever the tokenizer's padding side
    alone = [scorer.score_batch([s])[0][0] for s in seqs]
    with torch.no_grad():
        ref = [model(torch.tensor([s])).logits[0, 0].item() for s in seqs]
        enc = tok(texts, return_tensors="pt", padding=True)
        ref_batch = model(**enc).logits[:, 0].tolist()
    for got in (batched, alone, ref_batch):
        assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-5
    if name == "tiny-gpt2":  # pad == eos: the eos-terminated text is read at the token before the eos
        assert scorer.readout_index(seqs[-1]) == len(seqs[-1]) - 2


def test_score_cli_accepts_a_seqcls_reward_model(seqcls: dict[str, Path]) -> None:
    path = seqcls["tiny-gpt2"]
    args = ["score", str(path), "--json", "--device", "cpu", "--batch-size", "2"]
    for t in TEXTS:
        args += ["--text", t]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["head"] == "reward" and "sequence-classification" in doc["summary"]["head_reason"]
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        ref = [model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in TEXTS]
    assert [r["index"] for r in doc["records"]] == list(range(len(TEXTS)))
    assert max(abs(r["score"] - x) for r, x in zip(doc["records"], ref)) < 1e-5


def test_token_cls_critic_scores_equal_its_logits_at_the_last_token(tmp_path: Path) -> None:
    path = make_classifier("tiny-llama", tmp_path / "critic", kind="token-cls")
    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    scorer = Scorer(path, options=ScoreOptions(device="cpu", per_token=True))
    assert (scorer.classifier, scorer.head) == ("token-cls", "value")
    seqs = [tok(t)["input_ids"] for t in TEXTS]
    scores, values = scorer.score_batch(seqs)
    assert values is not None
    with torch.no_grad():
        for s, score, row in zip(seqs, scores, values):
            logits = model(torch.tensor([s])).logits[0, :, 0]
            assert abs(score - logits[-1].item()) < 1e-5
            assert torch.allclose(torch.tensor(row), logits, atol=1e-5)


def test_classifier_refusals(seqcls: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["score", str(seqcls["tiny-gpt2"]), "--head", "value", "--text", "hi"])
    assert res.exit_code == 2 and "--head reward" in res.stderr
    two = make_classifier("tiny-gpt2", tmp_path / "two", num_labels=2)
    res = CliRunner().invoke(app, ["score", str(two), "--text", "hi"])
    assert res.exit_code == 2 and "2 labels" in res.stderr
