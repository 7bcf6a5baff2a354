"""``vhtool evaluate``: preference accuracy on the scoring engine, checked against ``vhtool score`` and by hand.

The known-answer model: ``builtin:tiny-gpt2`` with every block's output projections and the position embedding
zeroed, so the residual stream never changes and a sequence's value is ``v_head(ln_f(wte[last token]))``: the
last token alone decides the score. Pairs whose chosen answer ends in the best-scoring word of a list and whose
rejected answer ends in the worst are correct by construction; swapping them makes them wrong.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import TINY_LLAMA_PRESET, json_error, make_reward_adapter
from vhtool.cli.app import app
from vhtool.errors import InputError
from vhtool.models.evaluate import compare, mcnemar_exact, parse_pair, wilson_interval

WORDS = [" no", " blue", " dog", " one", " the", " a", " is", " and", " of", " to", " it", " we"]


def invoke(*args: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, [str(a) for a in args])


def evaluate(*args: Any) -> Any:
    return invoke("evaluate", *args)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def score_records(checkpoint: Path, records: list[dict[str, Any]], tmp: Path, *extra: Any) -> list[float]:
    """``vhtool score`` of score records: the independent reference for every number evaluate prints."""
    src = write_jsonl(tmp / "score-in.jsonl", records)
    res = invoke("score", checkpoint, "-i", src, "--json", *extra)
    assert res.exit_code == 0, res.stderr
    return [r["score"] for r in json.loads(res.stdout)["records"]]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evaluate")


def _edited(policy: Path, out: Path, edit: Any) -> Path:
    from vhtool import AutoModelForCausalLMWithValueHead

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLMWithValueHead.from_pretrained(policy)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(policy / name, out / name)
    return out


@pytest.fixture(scope="module")
def models(work: Path, initialised: Any) -> dict[str, Any]:
    """``last``: the last-token model; ``flat``: its value head zeroed (every score is the bias: all ties);
    ``table``: the last-token model's score of every token, computed here from its weights."""
    policy = initialised("builtin:tiny-gpt2")

    def last_token(model: Any) -> None:
        t = model.pretrained_model.transformer
        for block in t.h:
            for lin in (block.attn.c_proj, block.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
        t.wpe.weight.zero_()

    def flat(model: Any) -> None:
        last_token(model)
        model.v_head.summary.weight.zero_()
        model.v_head.summary.bias.fill_(0.25)

    last = _edited(policy, work / "last-token", last_token)
    from vhtool import AutoModelForCausalLMWithValueHead

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLMWithValueHead.from_pretrained(last).eval()  # no dropout in the head
    with torch.no_grad():
        t = model.pretrained_model.transformer
        table = model.v_head(t.ln_f(t.wte.weight)).squeeze(-1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(last)
    single = [w for w in WORDS if len(tok(w)["input_ids"]) == 1]
    by_score = sorted(single, key=lambda w: table[tok(w)["input_ids"][0]].item())
    return {
        "last": last,
        "flat": _edited(policy, work / "flat", flat),
        "policy": policy,
        "tok": tok,
        "table": table,
        "lo": by_score[0],
        "mid": by_score[len(by_score) // 2],
        "hi": by_score[-1],
    }


def known_set(models: dict[str, Any]) -> tuple[list[dict[str, Any]], list[bool]]:
    """Ten standard records; record i is correct by construction iff ``i`` is not 2, 5 or 9. Subset ``a`` has
    records 0-3 (three of four correct), ``b`` records 4-9 (four of six correct)."""
    hi, lo = models["hi"], models["lo"]
    records, expect = [], []
    for i in range(10):
        good = i not in (2, 5, 9)
        up = f" answer number {i} is" + hi
        down = f" reply {i} says it is" + lo
        records.append(
            {
                "prompt": f"Question {i}:",
                "chosen": up if good else down,
                "rejected": down if good else up,
                "subset": "a" if i < 4 else "b",
            }
        )
        expect.append(good)
    return records, expect


# ---------------------------------------------------------------------------------------------- known answer
def test_known_answer_accuracy_subsets_and_vhtool_score(models: dict[str, Any], tmp_path: Path) -> None:
    records, expect = known_set(models)
    tok = models["tok"]
    for r in records:  # the construction: each answer's last token is the word it ends with
        for a in (r["chosen"], r["rejected"]):
            last_word = " " + a.split(" ")[-1]
            assert tok(r["prompt"] + a)["input_ids"][-1] == tok(last_word)["input_ids"][0]
    src = write_jsonl(tmp_path / "pairs.jsonl", records)
    res = evaluate(models["last"], "-i", src, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    s, out = doc["summary"], doc["records"]
    assert [r["index"] for r in out] == list(range(10))
    assert [r["correct"] for r in out] == expect
    assert (s["count"], s["correct"], s["ties"], s["accuracy"]) == (10, 7, 0, 0.7)
    low, high = wilson_interval(7, 10)
    assert s["interval"] == {"low": low, "high": high, "level": 0.95}
    assert s["subsets"]["a"] == {"count": 4, "correct": 3, "ties": 0, "accuracy": 0.75}
    assert s["subsets"]["b"] == {"count": 6, "correct": 4, "ties": 0, "accuracy": 4 / 6}
    assert s["mean_over_subsets"] == pytest.approx((0.75 + 4 / 6) / 2)  # each subset counts once
    assert s["formats"] == {"standard": 10} and s["join"] == "concat"
    # the margins are the table's difference of the two last words, up to float error
    table = models["table"]
    gap = table[tok(models["hi"])["input_ids"][0]].item() - table[tok(models["lo"])["input_ids"][0]].item()
    assert gap > 0
    for r, good in zip(out, expect, strict=True):
        assert r["margin"] == pytest.approx(gap if good else -gap, abs=1e-5)
        assert r["subset"] in ("a", "b") and r["tie"] is False
    assert s["margin"]["min"] == pytest.approx(-gap, abs=1e-5) and s["margin"]["max"] == pytest.approx(gap, abs=1e-5)
    assert sum(b["count"] for b in s["margin"]["histogram"]) == 10
    # Independently: vhtool score on the same prompt + completion records, and the accuracy computed from it.
    chosen = score_records(
        models["last"], [{"prompt": r["prompt"], "completion": r["chosen"]} for r in records], tmp_path
    )
    rejected = score_records(
        models["last"], [{"prompt": r["prompt"], "completion": r["rejected"]} for r in records], tmp_path
    )
    assert sum(c > x for c, x in zip(chosen, rejected, strict=True)) / 10 == s["accuracy"]
    for r, c, x in zip(out, chosen, rejected, strict=True):
        assert r["chosen"] == pytest.approx(c, abs=1e-5) and r["rejected"] == pytest.approx(x, abs=1e-5)
    # Whatever the batches: one sequence a batch, or a tiny token budget, gives the same numbers and verdicts.
    for extra in (("--batch-size", 1), ("--max-batch-tokens", 24)):
        again = json.loads(evaluate(models["last"], "-i", src, "--json", *extra).stdout)
        assert [r["correct"] for r in again["records"]] == expect
        for a, b in zip(again["records"], out, strict=True):
            assert a["chosen"] == pytest.approx(b["chosen"], abs=1e-5)
            assert a["rejected"] == pytest.approx(b["rejected"], abs=1e-5)
        assert again["summary"]["batches"] > s["batches"]


def test_records_go_to_stdout_in_order_and_the_summary_to_stderr(models: dict[str, Any], tmp_path: Path) -> None:
    records, expect = known_set(models)
    src = write_jsonl(tmp_path / "pairs.jsonl", records)
    res = evaluate(models["last"], "-i", src, "--max-batch-tokens", 24)
    assert res.exit_code == 0, res.stderr
    out = lines(res.stdout)
    assert [r["index"] for r in out] == list(range(10)) and [r["correct"] for r in out] == expect
    assert list(out[0]) == ["index", "chosen", "rejected", "margin", "correct", "tie", "subset"]
    assert "vhtool evaluate" in res.stderr and "0.7000" in res.stderr and "mean over subsets" in res.stderr


# ---------------------------------------------------------------------------------------------- formats
def test_every_format_scores_what_vhtool_score_scores(initialised: Any, tmp_path: Path) -> None:
    """tiny-llama: a chat template and left padding. Each answer's score is vhtool score's for its score record."""
    policy = initialised("builtin:tiny-llama")
    user = [{"role": "user", "content": "What is 2+2?"}]
    records = [
        {"prompt": "Say hi.", "chosen": "Hello there, friend!", "rejected": "No."},
        {
            "prompt": user,
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5, or so"}],
        },
        {"chosen": "The sky is blue today.", "rejected": "Sky green."},
        {
            "chosen": [*user, {"role": "assistant", "content": "It is 4."}],
            "rejected": [*user, {"role": "assistant", "content": "Fish."}],
        },
        {"prompt": "Pick one.", "chosen": "This one.", "rejected": ["That one.", "None of them at all.", "Both."]},
    ]
    as_score = [
        [{"prompt": "Say hi.", "completion": "Hello there, friend!"}, {"prompt": "Say hi.", "completion": "No."}],
        [{"prompt": user, "completion": records[1]["chosen"]}, {"prompt": user, "completion": records[1]["rejected"]}],
        [{"text": "The sky is blue today."}, {"text": "Sky green."}],
        [
            {"prompt": user, "completion": [records[3]["chosen"][-1]]},
            {"prompt": user, "completion": [records[3]["rejected"][-1]]},
        ],
        [
            {"prompt": "Pick one.", "completion": a}
            for a in ("This one.", "That one.", "None of them at all.", "Both.")
        ],
    ]
    src = write_jsonl(tmp_path / "pairs.jsonl", records)
    res = evaluate(policy, "-i", src, "--json", "--max-batch-tokens", 40)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["formats"] == {
        "conversational": 1,
        "implicit": 1,
        "implicit-conversational": 1,
        "standard": 2,
    }
    assert doc["summary"]["join"] == "chat" and doc["summary"]["padding_side"] == "left"
    assert doc["summary"]["best_of_n"] == 1 and doc["summary"]["answers"] == 12
    # The implicit conversational record renders the same chat as the explicit one's prompt + answer: scored once.
    flat = [rec for group in as_score for rec in group]
    ref = score_records(policy, flat, tmp_path)
    got = [
        x
        for r in doc["records"]
        for x in [r["chosen"], *(r["rejected"] if isinstance(r["rejected"], list) else [r["rejected"]])]
    ]
    assert got == pytest.approx(ref, abs=1e-5)
    assert isinstance(doc["records"][4]["rejected"], list) and len(doc["records"][4]["rejected"]) == 3
    # --join concat: string prompt + answer concatenated as given, like score's --join concat
    res = evaluate(policy, "-i", write_jsonl(tmp_path / "std.jsonl", [records[0]]), "--json", "--join", "concat")
    ref = score_records(policy, as_score[0], tmp_path, "--join", "concat")
    r = json.loads(res.stdout)["records"][0]
    assert [r["chosen"], r["rejected"]] == pytest.approx(ref, abs=1e-5)


def test_json_array_and_parquet_read_like_jsonl(models: dict[str, Any], tmp_path: Path) -> None:
    import datasets

    records, _ = known_set(models)
    base = json.loads(evaluate(models["last"], "-i", write_jsonl(tmp_path / "p.jsonl", records), "--json").stdout)
    (tmp_path / "p.json").write_text(json.dumps(records, indent=1))
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "p.parquet"))
    for name in ("p.json", "p.parquet"):
        res = evaluate(models["last"], "-i", tmp_path / name, "--json")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["records"] == base["records"], name


def test_a_hub_data_set_offline_is_exit_2(models: dict[str, Any]) -> None:
    res = evaluate(models["last"], "-i", "my-org/preferences", "--split", "test", "--json")
    assert res.exit_code == 2
    err = json_error(res.stdout, 2)
    assert "my-org/preferences" in str(err["message"]) and "HF_HUB_OFFLINE" in str(err["message"])
    assert err["type"] == "HubUnavailableError"
    res = evaluate(models["last"], "-i", "no-such-file.jsonl")
    assert res.exit_code == 2 and "no such input file" in res.stderr


# ---------------------------------------------------------------------------------------------- best-of-N, ties
def test_best_of_n_needs_chosen_above_every_rejected_and_ties_count_as_incorrect(
    models: dict[str, Any], tmp_path: Path
) -> None:
    hi, mid, lo = models["hi"], models["mid"], models["lo"]
    records = [
        {"chosen": "it is" + hi, "rejected": ["it is" + mid, "so" + lo, "we said" + lo]},  # beats all: correct
        {"chosen": "it is" + mid, "rejected": ["it is" + lo, "it is" + hi]},  # beats one, not both: wrong
        {"chosen": "same text" + mid, "rejected": ["other" + lo, "same text" + mid]},  # ties the best: a tie
        {"chosen": "same" + hi, "rejected": "same" + hi},  # identical answers: a tie
    ]
    res = evaluate(models["last"], "-i", write_jsonl(tmp_path / "bon.jsonl", records), "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    out = doc["records"]
    assert [r["correct"] for r in out] == [True, False, False, False]
    assert [r["tie"] for r in out] == [False, False, True, True]
    assert out[2]["margin"] == 0.0 and out[3]["margin"] == 0.0 and isinstance(out[3]["rejected"], float)
    assert out[1]["margin"] == pytest.approx(out[1]["chosen"] - max(out[1]["rejected"]))
    s = doc["summary"]
    assert (s["count"], s["correct"], s["ties"], s["accuracy"], s["best_of_n"]) == (4, 1, 2, 0.25, 3)
    assert s["ties_count_as"] == "incorrect"
    # 12 answers, 8 distinct sequences: "it is"+hi, "it is"+mid, "same text"+mid and "same"+hi are scored once
    assert (s["answers"], s["sequences"]) == (12, 8)


def test_a_model_that_scores_everything_alike_ties_everywhere(models: dict[str, Any], tmp_path: Path) -> None:
    records, _ = known_set(models)
    res = evaluate(models["flat"], "-i", write_jsonl(tmp_path / "p.jsonl", records), "--json")
    s = json.loads(res.stdout)["summary"]
    assert (s["count"], s["correct"], s["ties"], s["accuracy"]) == (10, 0, 10, 0.0)
    assert s["margin"]["min"] == s["margin"]["max"] == 0.0


# ---------------------------------------------------------------------------------------------- subsets, bad records
def test_subset_field_and_records_without_a_subset(models: dict[str, Any], tmp_path: Path) -> None:
    records, _ = known_set(models)
    for i, r in enumerate(records):
        del r["subset"]
        if i % 2 == 0:
            r["domain"] = "even"
    res = evaluate(
        models["last"], "-i", write_jsonl(tmp_path / "p.jsonl", records), "--subset-field", "domain", "--json"
    )
    doc = json.loads(res.stdout)
    # even records 0, 2, 4, 6, 8: 2 is the wrong one; odd records have no subset and are only in the total
    assert doc["summary"]["subsets"] == {"even": {"count": 5, "correct": 4, "ties": 0, "accuracy": 0.8}}
    assert doc["summary"]["mean_over_subsets"] == 0.8 and doc["summary"]["accuracy"] == 0.7
    assert [r["subset"] for r in doc["records"]][:2] == ["even", None]


def test_a_bad_record_fails_with_its_line_or_is_skipped(models: dict[str, Any], tmp_path: Path) -> None:
    records, expect = known_set(models)
    records[3] = {"prompt": "x", "chosen": "fine"}  # no rejected
    records[6] = {"chosen": "   ", "rejected": "fine", "subset": "b"}  # an answer with nothing to score
    src = write_jsonl(tmp_path / "p.jsonl", records)
    out = tmp_path / "out.jsonl"
    res = evaluate(models["last"], "-i", src, "-o", out)
    assert res.exit_code == 2
    assert f"{src}: line 4: no rejected field" in res.stderr and not out.exists()
    assert list(tmp_path.iterdir()) == [src]
    res = evaluate(models["last"], "-i", src, "--json")
    assert json_error(res.stdout, 2)["type"] == "BadRecordError"
    res = evaluate(models["last"], "-i", src, "--on-error", "skip", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [s["line"] for s in doc["skipped"]] == [4, 7]
    assert doc["skipped"][1]["reason"] == "chosen: empty text"
    assert [r["index"] for r in doc["records"]] == [0, 1, 2, 4, 5, 7, 8, 9]
    assert doc["summary"]["skipped"] == 2 and doc["summary"]["count"] == 8
    assert doc["summary"]["correct"] == sum(e for i, e in enumerate(expect) if i not in (3, 6))


def test_parse_pair_refuses_what_is_not_a_preference_record() -> None:
    for doc, message in (
        ({"chosen": "a"}, "no rejected field"),
        ({"chosen": "a", "rejected": []}, "empty list"),
        ({"chosen": 3, "rejected": "b"}, "chosen must be a string"),
        ({"chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}, "all strings or all lists"),
        ({"chosen": "a", "rejected": "b", "subset": {"x": 1}}, "subset must be a string"),
        ({"prompt": 5, "chosen": "a", "rejected": "b"}, "prompt must be"),
    ):
        with pytest.raises(InputError, match=message):
            parse_pair(doc)
    pair = parse_pair({"chosen": "a", "rejected": ["b", "c"], "subset": 3})
    assert pair.best_of_n and pair.subset == "3" and pair.kind == "implicit" and len(pair.answers) == 3


# ---------------------------------------------------------------------------------------------- gates
def test_require_accuracy_exit_codes(models: dict[str, Any], tmp_path: Path) -> None:
    records, _ = known_set(models)  # accuracy 0.7, Wilson 95% lower bound 0.397
    src = write_jsonl(tmp_path / "p.jsonl", records)
    assert evaluate(models["last"], "-i", src, "-o", tmp_path / "ok.jsonl", "--require-accuracy", 0.7).exit_code == 0
    out = tmp_path / "below.jsonl"
    res = evaluate(models["last"], "-i", src, "-o", out, "--require-accuracy", 0.71, "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)  # one object: the summary, and the error
    assert doc["exit_code"] == 1 and "accuracy 0.7000 is below --require-accuracy 0.71" in doc["error"]["message"]
    assert doc["summary"]["gate"]["passed"] is False and doc["summary"]["gate"]["compared_value"] == 0.7
    assert len(out.read_text().splitlines()) == 10  # the evaluation itself is complete: its output is kept
    res = evaluate(models["last"], "-i", src, "--require-accuracy", 0.5, "--conservative", "-q")
    assert res.exit_code == 1 and "lower bound of accuracy 0.3968 is below --require-accuracy 0.5" in res.stderr
    assert evaluate(models["last"], "-i", src, "--require-accuracy", 0.39, "--conservative", "-q").exit_code == 0
    res = evaluate(models["last"], "-i", src, "--require-accuracy", 1.5)
    assert res.exit_code == 2 and "between 0 and 1" in res.stderr


def test_compare_counts_flips_by_hand_and_gates_on_regression(models: dict[str, Any], tmp_path: Path) -> None:
    records, expect = known_set(models)  # now: wrong on 2, 5, 9
    src = write_jsonl(tmp_path / "p.jsonl", records)
    # A previous run, by hand: wrong on 0, 1, 5; record 7 missing; an index 42 this run does not have.
    prev = [{"index": i, "correct": i not in (0, 1, 5)} for i in range(10) if i != 7] + [
        {"index": 42, "correct": True}
    ]
    write_jsonl(tmp_path / "prev.jsonl", prev)
    res = evaluate(models["last"], "-i", src, "--compare", tmp_path / "prev.jsonl", "--json")
    assert res.exit_code == 0, res.stderr
    c = json.loads(res.stdout)["summary"]["compare"]
    # paired 0-6, 8, 9. fixed (wrong -> right): 0, 1. broke (right -> wrong): 2, 9. both wrong: 5.
    assert (c["paired"], c["fixed"], c["broke"], c["both_wrong"], c["both_correct"]) == (9, 2, 2, 1, 4)
    assert (c["only_now"], c["only_before"]) == (1, 1)
    assert c["p_value"] == 1.0 and c["significantly_worse"] is False
    assert c["previous_accuracy"] == pytest.approx(6 / 9) and c["accuracy"] == pytest.approx(6 / 9)
    # A previous run right everywhere: 3 broke, 0 fixed, p = 2 * (1/2)^3 = 0.25: worse, but not significantly.
    write_jsonl(tmp_path / "all.jsonl", [{"index": i, "correct": True} for i in range(10)])
    args = ("-i", src, "--compare", tmp_path / "all.jsonl", "--require-no-regression")
    res = evaluate(models["last"], *args, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["summary"]["compare"]["p_value"] == 0.25
    res = evaluate(models["last"], *args, "--alpha", 0.3, "-q")
    assert res.exit_code == 1 and "significantly worse" in res.stderr and "3 records broke, 0 fixed" in res.stderr
    # The all-ties model against it: 10 broke, p = 2/1024.
    res = evaluate(models["flat"], *args, "--json")
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and doc["summary"]["compare"]["p_value"] == pytest.approx(2 / 1024)
    # --require-no-regression needs --compare; a file that is not an evaluate output is refused; so is -o PREV.
    assert "needs --compare" in evaluate(models["last"], "-i", src, "--require-no-regression").stderr
    res = evaluate(models["last"], "-i", src, "--compare", src)
    assert res.exit_code == 2 and "line 1 is not a vhtool evaluate record" in res.stderr
    res = evaluate(models["last"], "-i", src, "--compare", tmp_path / "all.jsonl", "-o", tmp_path / "all.jsonl")
    assert res.exit_code == 2 and "is the input file" in res.stderr


def test_statistics_by_hand() -> None:
    lo, hi = wilson_interval(7, 10)  # textbook values
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)
    assert wilson_interval(0, 0) is None and wilson_interval(5, 5) == (pytest.approx(0.5655, abs=1e-4), 1.0)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(0, 5) == 0.0625 and mcnemar_exact(1, 4) == 0.375
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(3000, 2900) == pytest.approx(0.197, abs=1e-3)
    c = compare([(0, True), (1, False), (2, True)], {0: False, 1: False, 2: True}, previous="p", alpha=0.05)
    assert (c.fixed, c.broke, c.both_wrong, c.both_correct, c.worse, c.better) == (1, 0, 1, 1, False, False)
    with pytest.raises(InputError, match="no record in common"):
        compare([(0, True)], {5: True}, previous="p", alpha=0.05)


def test_output_file_rules(models: dict[str, Any], tmp_path: Path) -> None:
    records, _ = known_set(models)
    src = write_jsonl(tmp_path / "p.jsonl", records)
    out = tmp_path / "out.jsonl"
    assert evaluate(models["last"], "-i", src, "-o", out, "-q").exit_code == 0
    first = out.read_bytes()
    res = evaluate(models["last"], "-i", src, "-o", out, "-q")
    assert res.exit_code == 2 and "--force" in res.stderr
    assert evaluate(models["last"], "-i", src, "-o", out, "-q", "--force").exit_code == 0
    assert out.read_bytes() == first
    assert "is the input file" in evaluate(models["last"], "-i", src, "-o", src).stderr


# ---------------------------------------------------------------------------------------------- heads
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_value_head_and_reward_adapter_give_vhtool_scores_scores(initialised: Any, work: Path, tmp_path: Path) -> None:
    adapter = make_reward_adapter(work / "reward-lora", TINY_LLAMA_PRESET)
    rewarded = work / "llama-rw"
    res = invoke("attach-reward-adapter", initialised("builtin:tiny-llama"), adapter, "-o", rewarded, "-q")
    assert res.exit_code == 0, res.stderr
    records = [
        {"prompt": "Hi.", "chosen": "Hello, how can I help?", "rejected": ["Bye.", "What?"]},
        {"chosen": "A long and careful answer to the question.", "rejected": "Short."},
    ]
    src = write_jsonl(tmp_path / "p.jsonl", records)
    flat = [
        {"prompt": "Hi.", "completion": "Hello, how can I help?"},
        {"prompt": "Hi.", "completion": "Bye."},
        {"prompt": "Hi.", "completion": "What?"},
        {"text": "A long and careful answer to the question."},
        {"text": "Short."},
    ]
    for head in ("reward", "value"):
        res = evaluate(rewarded, "-i", src, "--head", head, "--json")
        assert res.exit_code == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["summary"]["head"] == head
        got = [doc["records"][0]["chosen"], *doc["records"][0]["rejected"]]
        got += [doc["records"][1]["chosen"], doc["records"][1]["rejected"]]
        assert got == pytest.approx(score_records(rewarded, flat, tmp_path, "--head", head), abs=1e-5)


# ---------------------------------------------------------------------------------------------- torchrun
@contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_torchrun_output_is_byte_identical_to_one_process(initialised: Any, tmp_path: Path) -> None:
    """Two gloo ranks on the CPU share the batches; rank 0's file equals a one-thread single process's, byte for
    byte (torchrun runs each rank with OMP_NUM_THREADS=1, so the baseline runs with one thread too)."""
    import random

    rng = random.Random(3)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards"]

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    records = []
    for i in range(40):
        rejected: Any = text(rng.randint(1, 30)) if i % 3 else [text(rng.randint(1, 30)) for _ in range(3)]
        # prompts of 1-16 words: most are long enough for the prompt cache, a few run whole
        records.append({"prompt": text(rng.randint(1, 16)), "chosen": text(rng.randint(1, 30)), "rejected": rejected})
    src = write_jsonl(tmp_path / "p.jsonl", records)
    policy = initialised("builtin:tiny-gpt2")
    args = [str(policy), "-i", str(src), "--max-batch-tokens", "160"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "vhtool"]
    ranks = tmp_path / "ranks.jsonl"
    proc = subprocess.run(
        [*cmd, "evaluate", *args, "-o", str(ranks), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    with one_thread():
        base = evaluate(*args, "-o", tmp_path / "single.jsonl", "--json")
    assert base.exit_code == 0, base.stderr
    assert proc.returncode == 0, proc.stderr
    assert ranks.read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    summary, single = json.loads(proc.stdout)["summary"], json.loads(base.stdout)["summary"]
    assert summary["ranks"] == 2 and single["ranks"] == 1 and summary["batches"] >= 4
    same = ("count", "correct", "ties", "accuracy", "interval", "margin", "sequences", "tokens", "batches")
    same += ("prompt_cache", "forwarded_tokens")
    assert {k: summary[k] for k in same} == {k: single[k] for k in same}
    assert summary["prompt_cache"]["state"] == "on" and summary["prompt_cache"]["prompts"] > 4
    assert summary["forwarded_tokens"] < summary["tokens"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "ranks.jsonl", "single.jsonl"]
    assert not math.isnan(summary["accuracy"])
