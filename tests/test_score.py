"""``vhtool score``: batched, sorted, backbone-only scoring equals a plain per-record forward, in input order."""

from __future__ import annotations

import json
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vhtool
from vhtool.cli.app import app
from vhtool.models.scoring import InputSpec, ScoreOptions, Scorer, plan_batches, read_inputs, score_dataset

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "every",
    "jovial",
    "knight",
]


def _init(src: str, out: Path) -> Path:
    res = CliRunner().invoke(app, ["init", src, "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("score")


@pytest.fixture(scope="module")
def ckpts(work: Path, initialised: Callable[..., Path]) -> dict[str, Path]:
    """Policies from the built-ins (tiny-gpt2 pads right, tiny-llama left), plus copies padding the other side."""
    out = {"gpt2": initialised("builtin:tiny-gpt2"), "llama": initialised("builtin:tiny-llama")}
    for name, side in (("gpt2", "left"), ("llama", "right")):
        flipped = work / f"{name}-{side}"
        shutil.copytree(out[name], flipped)
        cfg_path = flipped / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        assert cfg["padding_side"] != side
        cfg["padding_side"] = side
        cfg_path.write_text(json.dumps(cfg))
        out[f"{name}-{side}"] = flipped
    return out


_REF: dict[str, tuple[Any, Any]] = {}


def reference(path: Path) -> tuple[Any, Any]:
    """The plain model and tokenizer, loaded the ordinary way (cached per checkpoint)."""
    from transformers import AutoTokenizer

    key = str(path)
    if key not in _REF:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(key).eval()
        _REF[key] = (model, AutoTokenizer.from_pretrained(key))
    return _REF[key]


def ref_values(path: Path, ids: list[int]) -> torch.Tensor:
    """The straightforward per-record forward: one unpadded sequence, full forward with logits, all values."""
    model, _ = reference(path)
    t = torch.tensor([ids])
    with torch.no_grad():
        _, _, value = model(input_ids=t, attention_mask=torch.ones_like(t))
    return value[0]


def texts(n: int, seed: int = 0, hi: int = 70) -> list[str]:
    rng = random.Random(seed)
    lengths = [rng.randint(1, hi) for _ in range(n)]
    rng.shuffle(lengths)
    return [" ".join(rng.choice(WORDS) for _ in range(k)) for k in lengths]


def write_jsonl(path: Path, docs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def run(*args: Any, input: str | None = None) -> Any:
    return CliRunner().invoke(app, ["score", *[str(a) for a in args]], input=input)


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ equal to a plain forward
@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt2-left", "llama-right"])
def test_value_scores_equal_per_record_forward(name: str, ckpts: dict[str, Path], tmp_path: Path) -> None:
    path = ckpts[name]
    data = texts(24, seed=1)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "id": k} for k, t in enumerate(data)])
    # A small budget and batch size: many batches of mixed widths, sorted away from input order.
    res = run(path, "-i", src, "--max-batch-tokens", 300, "--batch-size", 6, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    got = doc["records"]
    assert [r["index"] for r in got] == list(range(len(data)))
    _, tok = reference(path)
    assert tok.padding_side == {"gpt2": "right", "llama": "left"}.get(name, name.split("-")[-1])
    for r, text in zip(got, data, strict=True):
        ids = tok(text)["input_ids"]
        assert r["tokens"] == len(ids)
        assert "truncated" not in r and "values" not in r
        assert r["score"] == pytest.approx(ref_values(path, ids)[-1].item(), abs=1e-5)
    assert doc["summary"]["forward"] == "backbone"
    assert doc["summary"]["padding_side"] == ("left" if name in ("llama", "gpt2-left") else "right")


@pytest.fixture(scope="module")
def rewarded(ckpts: dict[str, Path], work: Path) -> dict[str, Path]:
    """The built-in policies with a LoRA reward adapter attached (non-zero random LoRA B and score head)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from vhtool.builtin import builtin_path

    out: dict[str, Path] = {}
    targets = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "gate_proj"]}
    for arch in ("gpt2", "llama"):
        torch.manual_seed(11)
        seq_cls = AutoModelForSequenceClassification.from_pretrained(
            builtin_path(f"builtin:tiny-{arch}"), num_labels=1
        )
        peft_model = get_peft_model(
            seq_cls, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets[arch])
        )
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name or ".score." in name:
                    p.normal_(0.0, 0.5)
        peft_model.save_pretrained(work / f"{arch}-rm")
        res = CliRunner().invoke(
            app, ["attach-reward-adapter", str(ckpts[arch]), str(work / f"{arch}-rm"), "-o", str(work / f"{arch}-rw")]
        )
        assert res.exit_code == 0, res.stderr
        out[arch] = work / f"{arch}-rw"
    return out


def peft_reward(arch: str, adapter: Path, ids: list[int]) -> float:
    """The reference reward: PEFT's sequence classifier on the same base, one unpadded record."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from vhtool.builtin import builtin_path

    key = f"peft-{arch}"
    if key not in _REF:
        seq_cls = AutoModelForSequenceClassification.from_pretrained(
            builtin_path(f"builtin:tiny-{arch}"), num_labels=1
        )
        _REF[key] = (PeftModel.from_pretrained(seq_cls, adapter).eval(), None)
    with torch.no_grad():
        return float(_REF[key][0](input_ids=torch.tensor([ids])).logits[0, 0])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_scores_equal_peft_classifier(
    arch: str, rewarded: dict[str, Path], ckpts: dict[str, Path], work: Path, tmp_path: Path
) -> None:
    path = rewarded[arch]
    data = texts(16, seed=8)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in data])
    res = run(path, "-i", src, "--max-batch-tokens", 200, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["head"] == "reward" and doc["summary"]["head_reason"] == "default: reward adapter attached"
    _, tok = reference(ckpts[arch])
    assert [r["index"] for r in doc["records"]] == list(range(16))
    for r, text in zip(doc["records"], data, strict=True):
        ids = tok(text)["input_ids"]
        assert r["score"] == pytest.approx(peft_reward(arch, work / f"{arch}-rm", ids), abs=1e-5)
    # --head value on the same checkpoint: the policy's values, the reward adapter switched off.
    res = run(path, "-i", src, "--head", "value", "--json", "--per-token")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["head"] == "value" and doc["summary"]["head_reason"] == "--head"
    for r, text in zip(doc["records"], data, strict=True):
        ref = ref_values(ckpts[arch], tok(text)["input_ids"])
        assert r["score"] == pytest.approx(ref[-1].item(), abs=1e-5)
        np.testing.assert_allclose(r["values"], ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", ["opt", "gpt-neo", "gpt-neox", "qwen2"])
def test_backbone_path_other_archs_input_ids(arch: str, saved_model: Any, work: Path, tmp_path: Path) -> None:
    """No tokenizer in these checkpoints: input_ids records; the backbone self-check passes (OPT: project_out)."""
    policy = work / f"{arch}-policy"
    if not policy.exists():
        _init(str(saved_model(arch)), policy)
    rng = random.Random(2)
    seqs = [[rng.randrange(3, 128) for _ in range(rng.randint(1, 40))] for _ in range(12)]
    got: list[Any] = []
    summary = score_dataset(
        policy,
        inputs=InputSpec(path=write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": s} for s in seqs])),
        options=ScoreOptions(max_batch_tokens=120),
        on_record=got.append,
    )
    assert summary.forward == "backbone"
    assert any("no tokenizer" in n for n in summary.notes)
    assert summary.batches > 1
    for rec, seq in zip(got, seqs, strict=True):
        assert rec.tokens == len(seq)
        assert rec.score == pytest.approx(ref_values(policy, seq)[-1].item(), abs=1e-5)


def test_per_token_values(ckpts: dict[str, Path]) -> None:
    path = ckpts["llama"]
    data = texts(6, seed=3, hi=20)
    res = run(path, *[x for t in data for x in ("--text", t)], "--per-token", "--max-batch-tokens", 40)
    assert res.exit_code == 0, res.stderr
    _, tok = reference(path)
    for r, text in zip(records(res.stdout), data, strict=True):
        ref = ref_values(path, tok(text)["input_ids"])
        assert len(r["values"]) == r["tokens"] == len(ref)
        np.testing.assert_allclose(r["values"], ref.numpy(), atol=1e-5)
        assert r["values"][-1] == pytest.approx(r["score"], abs=1e-7)


# ---------------------------------------------------------------------------------------------- inputs
def test_prompt_completion_chat_and_concat(ckpts: dict[str, Path], tmp_path: Path) -> None:
    path = ckpts["llama"]
    pairs = [("What is a fox?", "A quick brown animal."), ("Say hi", "hi"), ("Count", "one two three four")]
    src = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": p, "completion": c} for p, c in pairs])
    _, tok = reference(path)
    for mode, flags in (("chat", []), ("chat", ["--join", "chat"]), ("concat", ["--join", "concat"])):
        res = run(path, "-i", src, *flags, "--json")
        assert res.exit_code == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["summary"]["join"] == mode and doc["summary"]["joined_records"] == 3
        for r, (p, c) in zip(doc["records"], pairs, strict=True):
            if mode == "chat":
                rendered = tok.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
                )
                ids = tok(rendered, add_special_tokens=False)["input_ids"]
                assert ids.count(tok.bos_token_id) == 1  # the template's bos, not a second one
            else:
                ids = tok(p + c)["input_ids"]
            assert r["tokens"] == len(ids)
            assert r["score"] == pytest.approx(ref_values(path, ids)[-1].item(), abs=1e-5)
    # tiny-gpt2 has no chat template: the default is concat, and asking for chat is an input error.
    res = run(ckpts["gpt2"], "-i", src, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["summary"]["join"] == "concat"
    res = run(ckpts["gpt2"], "-i", src, "--join", "chat")
    assert res.exit_code == 2 and "no chat template" in res.stderr


def test_input_ids_text_file_stdin_and_text_flags(ckpts: dict[str, Path], tmp_path: Path) -> None:
    path = ckpts["gpt2"]
    data = texts(5, seed=4, hi=15)
    _, tok = reference(path)
    expected = [ref_values(path, tok(t)["input_ids"])[-1].item() for t in data]
    ids_file = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": tok(t)["input_ids"]} for t in data])
    txt = tmp_path / "plain.txt"
    txt.write_text("\n".join(data) + "\n")
    sniffed = tmp_path / "plain_no_suffix"
    sniffed.write_text("\n".join(data) + "\n")
    sniffed_jsonl = write_jsonl(tmp_path / "records.data", [{"text": t} for t in data])
    runs = {
        "input_ids": run(path, "-i", ids_file, "--json"),
        "txt": run(path, "-i", txt, "--json"),
        "sniffed-text": run(path, "-i", sniffed, "--json"),
        "sniffed-jsonl": run(path, "-i", sniffed_jsonl, "--json"),
        "stdin": run(path, "-i", "-", "--json", input="\n".join(data) + "\n"),
        "stdin-jsonl": run(path, "-i", "-", "--json", input="".join(json.dumps({"text": t}) + "\n" for t in data)),
        "text": run(path, *[x for t in data for x in ("--text", t)], "--json"),
    }
    formats = {"input_ids": "jsonl", "sniffed-jsonl": "jsonl", "stdin-jsonl": "jsonl"}
    for label, res in runs.items():
        assert res.exit_code == 0, (label, res.stderr)
        doc = json.loads(res.stdout)
        assert doc["summary"]["input_format"] == formats.get(label, "text"), label
        np.testing.assert_allclose([r["score"] for r in doc["records"]], expected, atol=1e-5, err_msg=label)


def test_max_length_truncation_flagged(ckpts: dict[str, Path]) -> None:
    path = ckpts["gpt2"]
    data = ["fox " * 30, "dog", "the quick brown fox jumps"]
    res = run(path, *[x for t in data for x in ("--text", t)], "--max-length", 8, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    _, tok = reference(path)
    for r, text in zip(doc["records"], data, strict=True):
        ids = tok(text)["input_ids"]
        assert r.get("truncated", False) is (len(ids) > 8)
        assert r["tokens"] == min(len(ids), 8)
        assert r["score"] == pytest.approx(ref_values(path, ids[:8])[-1].item(), abs=1e-5)
    assert doc["summary"]["truncated"] == sum(len(tok(t)["input_ids"]) > 8 for t in data) > 0


def test_summary_statistics(ckpts: dict[str, Path], tmp_path: Path) -> None:
    data = texts(25, seed=5)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in data])
    res = run(ckpts["llama"], "-i", src, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    s, scores = doc["summary"], np.array([r["score"] for r in doc["records"]])
    assert s["count"] == 25 and s["skipped"] == 0 and s["nan_count"] == 0 and s["inf_count"] == 0
    assert s["mean"] == pytest.approx(scores.mean(), abs=1e-9)
    assert s["std"] == pytest.approx(scores.std(), abs=1e-9)
    assert s["min"] == scores.min() and s["max"] == scores.max()
    assert s["tokens"] == sum(r["tokens"] for r in doc["records"]) <= s["padded_tokens"]
    assert s["tokens_per_s"] > 0 and s["head"] == "value" and s["head_reason"].startswith("default")
    assert s["dtype"] == "float32" and s["device"] == "cpu"
    # Records go to stdout; the human summary table is for a terminal only (test_score_display), not a pipe.
    res = run(ckpts["llama"], "-i", src)
    assert res.exit_code == 0 and len(records(res.stdout)) == 25
    assert "mean" not in res.stderr and f"{scores.mean():.6g}" not in res.stderr


def test_nonfinite_scores_counted_and_written_as_null(ckpts: dict[str, Path], work: Path) -> None:
    from safetensors.torch import load_file, save_file

    bad = work / "gpt2-nan"
    if not bad.exists():
        shutil.copytree(ckpts["gpt2"], bad)
        state = load_file(str(bad / "model.safetensors"))
        state["v_head.summary.bias"] = torch.tensor([float("nan")])
        save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    res = run(bad, "--text", "a fox", "--text", "a dog", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)  # strict JSON: no NaN literal
    assert [r["score"] for r in doc["records"]] == [None, None]
    assert [r["nonfinite"] for r in doc["records"]] == ["nan", "nan"]
    assert doc["summary"]["nan_count"] == 2 and doc["summary"]["mean"] is None


def test_output_file_and_json_with_output(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    res = run(ckpts["gpt2"], "--text", "a fox", "--text", "a lazy dog", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert "records" not in doc and doc["summary"]["count"] == 2 and doc["summary"]["output"] == str(out)
    assert [r["index"] for r in records(out.read_text())] == [0, 1]
    res = run(ckpts["gpt2"], "--text", "x", "-o", out)
    assert res.exit_code == 2 and "--force" in res.stderr
    assert len(records(out.read_text())) == 2  # untouched
    res = run(ckpts["gpt2"], "--text", "x", "-o", out, "--force", "--quiet")
    assert res.exit_code == 0 and res.stdout == "" and len(records(out.read_text())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]


# ---------------------------------------------------------------------------------------------- bad records
BAD = [
    ('{"text": "fine"}', None),
    ("{not json", "invalid JSON"),
    ('{"text": ""}', "empty text"),
    ('{"title": "x"}', "no text, prompt + completion, or input_ids field"),
    ('{"prompt": "only a prompt"}', "has prompt but no completion"),
    ('{"text": "a", "input_ids": [1]}', "ambiguous record"),
    ('{"text": "a", "prompt": "b"}', "ambiguous record: it has text, prompt; give exactly one of"),
    ('{"input_ids": [1, 99999]}', "input_ids has id 99999, outside the model's vocabulary"),
    ('{"input_ids": "12"}', "input_ids must be a list of integers"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"text": "fox " * 600}), "more than the model's 512 positions; pass --max-length"),
]


@pytest.mark.parametrize("k", range(1, len(BAD)))
def test_bad_record_fails_with_line_number(k: int, ckpts: dict[str, Path], tmp_path: Path) -> None:
    line, message = BAD[k]
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "first"}\n\n' + line + "\n")  # a blank line: not a record, but counted as a line
    out = tmp_path / "out.jsonl"
    res = run(ckpts["gpt2"], "-i", src, "-o", out)
    assert res.exit_code == 2
    assert "in.jsonl: line 3: " in res.stderr and message in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no temporary left
    if k == 1:  # on stdout, a file input is validated in full before the first record is printed
        res = run(ckpts["gpt2"], "-i", src)
        assert res.exit_code == 2 and res.stdout == "" and "line 3: invalid JSON" in res.stderr


def test_on_error_skip_counts_and_warns(ckpts: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(line for line, _ in BAD) + "\n" + '{"text": "last"}\n')
    res = run(ckpts["gpt2"], "-i", src, "--on-error", "skip", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [r["index"] for r in doc["records"]] == [0, len(BAD)]
    assert doc["summary"]["skipped"] == len(BAD) - 1 == len(doc["skipped"])
    assert [s["line"] for s in doc["skipped"]] == list(range(2, len(BAD) + 1))
    for k in range(1, len(BAD)):
        assert f"line {k + 1}: " in res.stderr and BAD[k][1] in res.stderr


def test_empty_input_is_an_error_and_writes_nothing(ckpts: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n")
    out = tmp_path / "out.jsonl"
    res = run(ckpts["gpt2"], "-i", src, "-o", out, "--json")
    assert res.exit_code == 2 and "no records to score" in res.stderr, res.stderr
    assert json.loads(res.stdout)["error"]["type"] == "InputError"
    assert not out.exists()  # no 0-byte output
    res = run(ckpts["gpt2"], "-i", "-", "-o", out, input="")  # stdin: found after the load, still no output
    assert res.exit_code == 2 and "stdin: no records to score" in res.stderr and not out.exists()


def test_empty_text_line_in_plain_text_and_stdin_window(ckpts: dict[str, Path]) -> None:
    res = run(ckpts["gpt2"], "-i", "-", "--format", "text", input="a fox\n\nlast\n")
    assert res.exit_code == 2 and "stdin: line 2: empty text" in res.stderr
    res = run(ckpts["gpt2"], "-i", "-", "--format", "text", "--on-error", "skip", input="a fox\n\nlast\n")
    assert res.exit_code == 0 and [r["index"] for r in records(res.stdout)] == [0, 2]


# ---------------------------------------------------------------------------------------------- bad usage
def test_usage_errors(ckpts: dict[str, Path], work: Path, tmp_path: Path) -> None:
    g = ckpts["gpt2"]
    cases = [
        ((g,), "nothing to score"),
        ((g, "-i", tmp_path / "missing.jsonl"), "no such input file"),
        ((g, "-i", tmp_path), "is a directory"),
        ((g, "--text", "a", "-i", "-"), "not both"),
        ((g, "--text", "a", "--head", "reward"), "has no reward adapter"),
        ((g, "--text", "a", "--head", "policy"), "'policy' is not a choice for --head; choose one of 'reward'"),
        ((g, "--text", "a", "--max-length", 600), "more than the model's 512 positions"),
        ((g, "--text", "a", "--dtype", "int8"), "'int8' is not a choice for --dtype; choose one of 'float32'"),
        ((g, "--text", "a", "--device", "cuda"), "no CUDA device"),
        ((g, "--text", "a", "--on-error", "ignore"), "'ignore' is not a choice for --on-error; choose one of 'fail'"),
        ((tmp_path / "nope", "--text", "a"), "no such directory"),
    ]
    for args, message in cases:
        res = run(*args)
        assert res.exit_code == 2, (args, res.stderr)
        assert message in res.stderr, (args, res.stderr)
    res = run(g, "--text", "a", "--batch-size", 0)
    assert res.exit_code == 2
    src = write_jsonl(tmp_path / "same.jsonl", [{"text": "a"}])
    res = run(g, "-i", src, "-o", src, "--force")
    assert res.exit_code == 2 and "is the input file" in res.stderr and src.read_text() == '{"text": "a"}\n'


def test_seq2seq_refused(work: Path) -> None:
    t5 = work / "t5"
    if not t5.exists():
        _init("builtin:tiny-t5", t5)
    res = run(t5, "--text", "hello")
    assert res.exit_code == 2 and "encoder-decoder" in res.stderr and "causal LMs only" in res.stderr


def test_plain_model_without_value_head_refused(saved_model: Any) -> None:
    res = run(saved_model("gpt2"), "-i", "-", input='{"input_ids": [1, 2]}\n')
    assert res.exit_code == 2 and "no value-head weights" in res.stderr


# ---------------------------------------------------------------------------------------------- engine pieces
def test_plan_batches_budget_and_cover() -> None:
    rng = random.Random(6)
    lengths = [rng.randint(1, 300) for _ in range(500)]
    for budget, size in ((1024, None), (512, 4), (100, None)):
        batches = plan_batches(lengths, max_batch_tokens=budget, batch_size=size)
        assert sorted(k for b in batches for k in b) == list(range(500))
        for b in batches:
            width = max(lengths[k] for k in b)
            assert len(b) == 1 or width * len(b) <= budget
            assert size is None or len(b) <= size
    # Sorting is what saves padding: far fewer padded tokens than batches in file order.
    sorted_pad = sum(
        len(b) * max(lengths[k] for k in b) for b in plan_batches(lengths, max_batch_tokens=10**9, batch_size=8)
    )
    file_order = sum(8 * max(lengths[k : k + 8]) for k in range(0, 500, 8))
    assert sorted_pad < 0.8 * file_order


def test_windows_stream_in_order_with_a_small_window(ckpts: dict[str, Path]) -> None:
    data = texts(23, seed=7, hi=30)
    seen: list[int] = []
    steps: list[int] = []
    token_steps: list[int] = []
    scorer = Scorer(ckpts["gpt2"], options=ScoreOptions(window=5, max_batch_tokens=64))
    summary = score_dataset(
        ckpts["gpt2"],
        inputs=InputSpec(texts=tuple(data)),
        options=scorer.options,
        on_record=lambda r: seen.append(r.index),
        progress=lambda records, tokens: steps.append(records) or token_steps.append(tokens),
        scorer=scorer,
    )
    assert seen == list(range(23)) and sum(steps) == 23 and summary.count == 23
    assert len(steps) == summary.batches  # progress comes batch by batch, as records are scored
    assert sum(token_steps) == summary.tokens
    fmt, items = read_inputs(InputSpec(texts=("a", "b")))
    assert fmt == "text" and [i.payload for i in items] == ["a", "b"]


def test_cli_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, vhtool.cli.score_cmd; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- padding ids
def _gpt2_vocab_1000(root: Path, tokenizer: str) -> Path:
    """A random GPT-2 with ``vocab_size=1000`` and GPT-2's default eos/bos 50256, outside the embedding.

    ``tokenizer``: ``none`` (padding falls back to the config's eos) or ``eos-out-of-range`` (a word-level
    tokenizer of ids < 1000 whose eos is 50256, as in GPT-2's own tokenizer; no pad token, so eos pads).
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=1000, n_embd=32, n_layer=2, n_head=2)
    assert cfg.eos_token_id == 50256 and cfg.pad_token_id is None
    src = root / f"gpt2-vocab1000-{tokenizer}"
    GPT2LMHeadModel(cfg).save_pretrained(src)
    if tokenizer == "eos-out-of-range":
        vocab = {f"w{k}": k for k in range(1000)} | {"<|endoftext|>": 50256}
        tok = Tokenizer(WordLevel(vocab, unk_token="w0"))
        tok.pre_tokenizer = Whitespace()  # type: ignore[assignment]
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="w0")
        assert fast.pad_token_id is None and fast.eos_token_id == 50256
        fast.save_pretrained(src)
    return _init(str(src), root / f"{src.name}-vh")


@pytest.mark.parametrize("tokenizer", ["none", "eos-out-of-range"])
def test_pad_id_outside_the_embedding_pads_with_a_valid_id(tokenizer: str, tmp_path: Path) -> None:
    """eos (50256) as the padding id of a 1000-row embedding: padded batches score like unpadded records."""
    ckpt = _gpt2_vocab_1000(tmp_path, tokenizer)
    rng = random.Random(3)
    docs = [{"input_ids": [rng.randrange(1000) for _ in range(rng.randint(1, 60))]} for _ in range(100)]
    src = write_jsonl(tmp_path / "ids.jsonl", docs)
    res = run(ckpt, "-i", src, "--json", "--max-batch-tokens", 500)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["count"] == 100 and doc["summary"]["padding_fraction"] > 0
    got = doc["records"]
    assert [r["index"] for r in got] == list(range(100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt)).eval()
    for r, d in zip(got, docs, strict=True):
        t = torch.tensor([d["input_ids"]])
        with torch.no_grad():
            _, _, value = model(input_ids=t, attention_mask=torch.ones_like(t))
        assert r["tokens"] == len(d["input_ids"])
        assert r["score"] == pytest.approx(value[0, -1].item(), abs=1e-5)


def test_valid_pad_id() -> None:
    from vhtool.models.scoring.load import valid_pad_id

    assert valid_pad_id(5, 1000) == 5 and valid_pad_id([7, 8], 1000) == 7
    for bad in (50256, 1000, -1, None, [], True, "0"):
        assert valid_pad_id(bad, 1000) == 0


def test_a_json_array_line_is_never_scored_as_text(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """Sniffing (no .jsonl suffix): a first line that is a JSON array makes the input JSONL, so it is a bad record."""
    src = tmp_path / "in.data"
    src.write_text('["a", "b"]\n{"text": "ok"}\n')
    res = run(ckpts["gpt2"], "-i", src)
    assert res.exit_code == 2 and "line 1: expected a JSON object, got list" in res.stderr, res.stderr
    plain = tmp_path / "plain.data"
    plain.write_text("42\nhello\n")  # JSON scalars are text lines
    res = run(ckpts["gpt2"], "-i", plain, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["summary"]["count"] == 2


def test_pickle_weights_are_read_only_with_allow_pickle(initialised: Callable[..., Path], tmp_path: Path) -> None:
    """transformers would unpickle a pytorch_model.bin (weights-only) without asking; vhtool asks for the flag."""
    from safetensors.torch import load_file

    src = initialised("gpt2")
    pick = tmp_path / "pickled"
    pick.mkdir()
    shutil.copy(src / "config.json", pick / "config.json")
    torch.save(load_file(str(src / "model.safetensors")), pick / "pytorch_model.bin")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in pick.iterdir())
    runner = CliRunner()
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"input_ids": [1, 2, 3]}\n')
    res = runner.invoke(app, ["score", str(pick), "-i", str(ids), "--allow-missing"])
    assert res.exit_code == 2 and "--allow-pickle" in res.stderr, res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["score", str(pick), "-i", str(ids), "--allow-pickle", "--head", "value"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[0])["tokens"] == 3
    assert sorted((p.name, p.stat().st_mtime_ns) for p in pick.iterdir()) == before  # the input is untouched
