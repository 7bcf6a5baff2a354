"""``vhtool evaluate`` on every kind of model ``vhtool score`` reads, with score's model options, and its prompt cache.

References: ``vhtool score`` on the same score records (the engine underneath), transformers'
``AutoModelForSequenceClassification`` logits, and the frameworks' own rewards as tests/frameworks.py computes
them from their source. The prompt cache (a record's shared prompt run once, its answers from the cached keys and
values) must give the numbers of the plain forward within 1e-5.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from tests import frameworks as F
from tests.test_score_seqcls import make_classifier
from vhtool.cli.app import app

PROMPT = "Here is a question about the weather in the mountains this week, please answer it carefully:"
RECORDS: list[dict[str, Any]] = [
    {"prompt": PROMPT, "chosen": " It will be sunny and warm.", "rejected": " Cats."},
    {"prompt": PROMPT, "chosen": " Rain on Tuesday.", "rejected": [" No idea.", " Snow, then sun.", " Rain."]},
    {"prompt": "Hi.", "chosen": " Hello!", "rejected": " Go away."},  # too short a prompt to cache
    {"prompt": PROMPT, "chosen": " Rain", "rejected": " Rain on Tuesday and Wednesday."},  # one answer extends another
    {
        "chosen": "The best answer to this long question is: yes, always.",
        "rejected": "The best answer to this long question is: no, never.",
    },  # implicit prompt: the shared tokens are still shared
]


def invoke(*args: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, [str(a) for a in args])


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def answers_of(record: dict[str, Any]) -> list[str]:
    rejected = record["rejected"]
    return [record["chosen"], *(rejected if isinstance(rejected, list) else [rejected])]


def score_records_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each answer as the score record ``vhtool score`` would be given for it."""
    out: list[dict[str, Any]] = []
    for r in records:
        for a in answers_of(r):
            out.append({"prompt": r["prompt"], "completion": a} if "prompt" in r else {"text": a})
    return out


def evaluated(checkpoint: Path, src: Path, *extra: Any) -> tuple[list[float], dict[str, Any]]:
    """evaluate's per-answer scores (chosen, then rejected, record by record) and its summary."""
    res = invoke("evaluate", checkpoint, "-i", src, "--json", "--device", "cpu", *extra)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    got: list[float] = []
    for rec in doc["records"]:
        rej = rec["rejected"]
        got += [rec["chosen"], *(rej if isinstance(rej, list) else [rej])]
    return got, doc["summary"]


def scored(checkpoint: Path, records: list[dict[str, Any]], tmp: Path, *extra: Any) -> list[float]:
    src = write_jsonl(tmp / "score-in.jsonl", records)
    res = invoke("score", checkpoint, "-i", src, "--json", "--device", "cpu", *extra)
    assert res.exit_code == 0, res.stderr
    return [r["score"] for r in json.loads(res.stdout)["records"]]


@pytest.fixture(scope="module")
def seqcls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate-seqcls")
    return {name: make_classifier(name, root / name, seed=3) for name in ("tiny-gpt2", "tiny-llama")}


# ---------------------------------------------------------------------------------------------- seq-cls
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_seqcls_reward_model_gives_score_and_transformers_numbers(
    name: str, seqcls: dict[str, Path], tmp_path: Path
) -> None:
    """A plain ``…ForSequenceClassification`` (num_labels=1): evaluate's scores are vhtool score's on the same
    texts and the model's own logits, with the prompt cache on (the default) and off."""
    path = seqcls[name]
    src = write_jsonl(tmp_path / "pairs.jsonl", RECORDS)
    ref = scored(path, score_records_of(RECORDS), tmp_path)
    cached, summary = evaluated(path, src)
    assert summary["head"] == "reward" and "sequence-classification" in summary["head_reason"]
    assert summary["prompt_cache"]["state"] == "on" and summary["prompt_cache"]["prompts"] >= 2
    assert summary["forwarded_tokens"] < summary["tokens"]
    plain, off = evaluated(path, src, "--no-prompt-cache")
    assert off["prompt_cache"] == {"state": "off: --no-prompt-cache", "prompts": 0, "answers": 0, "tokens_saved": 0}
    assert cached == pytest.approx(ref, abs=1e-5)
    assert plain == pytest.approx(ref, abs=1e-5)
    # transformers itself, on texts (implicit-prompt records are texts; the chat template makes the others')
    texts = [a for r in RECORDS if "prompt" not in r for a in answers_of(r)]
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        logits = [model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    assert cached[-len(texts) :] == pytest.approx(logits, abs=1e-5)


def test_the_prompt_cache_falls_back_where_its_check_fails(
    seqcls: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose cached forward does not reproduce the plain one (a bidirectional model would not) is
    scored without the cache, and says so."""
    from vhtool.models.scoring.prefix import PromptCache

    monkeypatch.setattr(PromptCache, "_probe", lambda self, torch: False)
    path = seqcls["tiny-gpt2"]
    src = write_jsonl(tmp_path / "pairs.jsonl", RECORDS)
    got, summary = evaluated(path, src)
    assert summary["prompt_cache"]["state"].startswith("off: the cached forward does not reproduce")
    assert summary["forwarded_tokens"] == summary["tokens"]
    assert got == pytest.approx(scored(path, score_records_of(RECORDS), tmp_path), abs=1e-5)


# ---------------------------------------------------------------------------------------------- value head
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_value_head_with_the_prompt_cache_gives_score_numbers(name: str, initialised: Any, tmp_path: Path) -> None:
    path = initialised(f"builtin:{name}")
    src = write_jsonl(tmp_path / "pairs.jsonl", RECORDS)
    got, summary = evaluated(path, src, "--max-batch-tokens", "64")  # several chunks and continuation batches
    assert summary["head"] == "value" and summary["prompt_cache"]["state"] == "on"
    assert summary["prompt_cache"]["answers"] >= 6
    assert got == pytest.approx(scored(path, score_records_of(RECORDS), tmp_path), abs=1e-5)


# ---------------------------------------------------------------------------------------------- frameworks
def test_openrlhf_checkpoint_gives_openrlhfs_reward_and_takes_score_options(tmp_path: Path) -> None:
    """OpenRLHF's reward model (EOS appended, read at the EOS, normalised by its recorded mean/std); with
    --no-normalize the raw reward; --readout chooses another token, as score's does."""
    path = F.save_openrlhf("tiny-llama", tmp_path / "openrlhf", normalize=True, mean=0.25, std=2.0)
    records = [r for r in RECORDS if "prompt" not in r] + [
        {"chosen": "The weather will be fine tomorrow morning.", "rejected": "The weather will be bad."}
    ]
    src = write_jsonl(tmp_path / "pairs.jsonl", records)
    tok = AutoTokenizer.from_pretrained(path)
    texts = [a for r in records for a in answers_of(r)]
    expect = [F.openrlhf_reward(path, tok(t)["input_ids"]) for t in texts]
    got, summary = evaluated(path, src)
    assert summary["prompt_cache"]["state"] == "on"
    assert got == pytest.approx(expect, abs=1e-4)
    raw, _ = evaluated(path, src, "--no-normalize")
    assert [(r - 0.25) / 2.0 for r in raw] == pytest.approx(expect, abs=1e-4)
    for extra in (["--no-normalize"], ["--readout", "last"]):
        flat = [{"text": t} for t in texts]
        again, _ = evaluated(path, src, *extra)
        assert again == pytest.approx(scored(path, flat, tmp_path, *extra), abs=1e-5)


def test_deepspeed_chat_is_read_with_allow_pickle_and_gives_its_reward(tmp_path: Path) -> None:
    path = F.save_deepspeed_chat("tiny-gpt2", tmp_path / "ds")
    records = [r for r in RECORDS if "prompt" not in r]
    src = write_jsonl(tmp_path / "pairs.jsonl", records)
    # without --allow-pickle the .bin is not read: evaluate refuses as score does, naming the flag (exit 2)
    res = invoke("evaluate", path, "-i", src, "-o", tmp_path / "out.jsonl")
    ref = invoke("score", path, "--text", "hello")
    assert res.exit_code == ref.exit_code == 2 and "Traceback" not in res.stderr
    assert "--allow-pickle" in res.stderr and res.stderr.strip() == ref.stderr.strip()
    assert not (tmp_path / "out.jsonl").exists()
    tok = AutoTokenizer.from_pretrained(path)
    expect = [F.deepspeed_chat_reward(path, tok(t)["input_ids"]) for r in records for t in answers_of(r)]
    got, _ = evaluated(path, src, "--allow-pickle")
    assert got == pytest.approx(expect, abs=1e-4)


def test_evaluate_offers_every_model_option_of_score() -> None:
    """The model options are declared once (vhtool/cli/score_cmd.py) and offered by both commands."""
    import re

    def options(command: str) -> set[str]:
        res = invoke(command, "--help")
        assert res.exit_code == 0
        return set(re.findall(r"--[a-z][a-z-]+", res.stdout))

    score_only = {"--per-token", "--text", "--format"}  # what only a list of texts has
    missing = options("score") - options("evaluate") - score_only
    assert not missing, missing
