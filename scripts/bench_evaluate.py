"""Benchmark of ``vhtool evaluate`` against a RewardBench-style loop and against the limit (one run, one machine).

    .venv/bin/python scripts/bench_evaluate.py [--pairs 2000] [--seed 0] [--prompt-cache]

Data: one seeded synthetic preference set (``--pairs`` records): lognormal prompt and answer lengths (words of a
small vocabulary; prompt median 20 words, answer median 30, sigma 0.8, clipped to 1-250), 25% conversational
(lists of messages), 20% best-of-4 (three rejected answers), the rest standard strings. With ``--prompt-cache``
the prompts' median is the answers' (30 words), so prompts are about half of every scored sequence's tokens.
Model: one tiny sequence-classification reward model, ``LlamaForSequenceClassification`` (num_labels=1; random,
seeded; hidden 128, 2 layers, the tokenizer and chat template of ``builtin:tiny-llama``) saved by
``save_pretrained``: what RewardBench loads, and what every method here runs.

Each method runs as a whole child process (wall time and the child's own peak RSS from ``wait4``), on the same
token sequences (every method tokenises an answer as ``vhtool score`` does: chat template, no added specials):

* ``vhtool evaluate CKPT -i pairs.jsonl -o FILE --json`` (the real CLI), twice: as it runs by default (the
  prompt cache on: a record's shared prompt runs once, its answers from the cached keys and values) and with
  ``--no-prompt-cache`` (every distinct sequence forwarded whole, what the limit below does).
* RewardBench stand-in (``rewardbench/rewardbench.py``): records in file order (``shuffle=False``), batches of 8
  (``batch_size: int = 8``), left padding (``tokenizer.padding_side = "left"``) with an attention mask and no
  position ids (what its ``text-classification`` pipeline passes), chosen and rejected as separate forwards
  (``reward_pipe(batch["text_chosen"])``, then ``batch["text_rejected"]``); best-of-N answers flattened in order
  and scored in batches of 8, as ``scripts/run_v2.py`` does. The seq-cls model's backbone, and its score head
  at the last position (where left padding puts every last token).
* The limit: the distinct sequences, grouped by exact length, forwarded in equal-length batches (no padding, no
  mask) under the same 16,384-token budget; seq-cls backbone + score head at the last position.

Reported: pairs/s over the whole process and over the scoring loop, peak RSS, accuracy, and the largest
difference of any answer's score from ``vhtool score``'s on the same record; then vhtool's loop (without the
cache) against the limit's and the RewardBench loop's, and the prompt cache's speed-up. Threads: 2. Results are
printed and written to ``bench-work/evaluate/results[-prompt-cache].json``. Not a test. A quick smoke:
``--pairs 50``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VHTOOL = str(Path(sys.executable).parent / "vhtool")
THREADS = 2
WORK = ROOT / "bench-work" / "evaluate"
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
    "and",
    "some",
    "answers",
    "are",
    "helpful",
    "others",
    "are",
    "not",
    "so",
    "we",
    "measure",
    "how",
    "often",
    "the",
    "model",
    "prefers",
    "the",
    "chosen",
    "one",
]


# ---------------------------------------------------------------------------------------------- processes
def measured(cmd: list[str]) -> tuple[str, float, float]:
    """Runs ``cmd`` as a child; returns (stdout, wall seconds, the child's peak RSS in MiB)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        proc = subprocess.Popen(cmd, env=env, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read().decode(), err_f.read().decode()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{stderr[-3000:]}")
    return stdout, wall, usage.ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- set-up
def make_model() -> Path:
    """One tiny seq-cls reward model: a random Llama (hidden 128, 2 layers) with tiny-llama's tokenizer."""
    path = WORK / "seqcls"
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from vhtool.builtin import builtin_path

    tok = AutoTokenizer.from_pretrained(builtin_path("builtin:tiny-llama"))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # a head that separates answers (the default init is near zero)
        model.score.weight.normal_(0, 1 / 128**0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_pairs(n: int, seed: int, *, prompt_median: float = 20) -> Path:
    rng = random.Random(seed)

    def text(median: float) -> str:
        k = max(1, min(250, round(rng.lognormvariate(0, 0.8) * median)))
        return " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."

    records = []
    for i in range(n):
        prompt = text(prompt_median)
        answers = [text(30) for _ in range(4 if rng.random() < 0.2 else 2)]
        rec: dict[str, Any] = {"subset": ["chat", "code", "math", "safety"][i % 4]}
        if rng.random() < 0.25:
            rec["prompt"] = [{"role": "user", "content": prompt}]
            msgs = [[{"role": "assistant", "content": a}] for a in answers]
            rec["chosen"], rest = msgs[0], msgs[1:]
        else:
            rec["prompt"] = prompt
            rec["chosen"], rest = answers[0], answers[1:]
        rec["rejected"] = rest if len(rest) > 1 else rest[0]
        records.append(rec)
    path = WORK / f"pairs-{n}-{seed}-{prompt_median:g}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def answers_of(pairs: Path) -> list[list[dict[str, Any]]]:
    """Each record's answers as score records (vhtool's own mapping)."""
    from vhtool.models.evaluate.pairs import parse_pair

    out = []
    for line in pairs.read_text().splitlines():
        out.append([dict(a) for a in parse_pair(json.loads(line)).answers])
    return out


# ---------------------------------------------------------------------------------------------- children
def _token_ids(checkpoint: Path, answers: list[list[dict[str, Any]]]) -> list[list[list[int]]]:
    """Every answer tokenised as vhtool score does (chat template, no added specials)."""
    from transformers import AutoTokenizer

    from vhtool.models.scoring.inputs import InputItem
    from vhtool.models.scoring.prepare import RecordPreparer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    prep = RecordPreparer(tokenizer=tok, join="chat", vocab_rows=len(tok), max_length=None, max_positions=None)
    flat = [InputItem(0, 1, a) for group in answers for a in group]
    ids = [p.ids or [] for p in prep.prepare(flat)]
    out, k = [], 0
    for group in answers:
        out.append(ids[k : k + len(group)])
        k += len(group)
    return out


def child(kind: str, checkpoint: Path, pairs: Path, result: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(THREADS)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, dtype=torch.float32).eval()
    pad = model.config.pad_token_id or 0
    groups = _token_ids(checkpoint, answers_of(pairs))

    def head(ids: Any, mask: Any) -> list[float]:
        hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return model.score(hidden[:, -1]).squeeze(-1).float().tolist()

    def left_padded(seqs: list[list[int]]) -> list[float]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = 1
        return head(ids, mask)

    t0 = time.perf_counter()
    scores: list[list[float]] = [[0.0] * len(g) for g in groups]
    tokens = padded = 0
    with torch.inference_mode():
        if kind == "standin":
            for start in range(0, len(groups), 8):  # file order, 8 records a step
                batch = list(range(start, min(start + 8, len(groups))))
                chosen = [groups[r][0] for r in batch]
                for r, s in zip(batch, left_padded(chosen), strict=True):
                    scores[r][0] = s
                rejected = [(r, a) for r in batch for a in range(1, len(groups[r]))]
                for k in range(0, len(rejected), 8):
                    part = rejected[k : k + 8]
                    seqs = [groups[r][a] for r, a in part]
                    for (r, a), s in zip(part, left_padded(seqs), strict=True):
                        scores[r][a] = s
                    tokens += sum(map(len, seqs))
                    padded += len(seqs) * max(map(len, seqs))
                tokens += sum(map(len, chosen))
                padded += len(chosen) * max(map(len, chosen))
        else:  # the limit: distinct sequences, equal-length batches, no padding
            distinct: dict[tuple[int, ...], float] = {}
            by_len: dict[int, list[tuple[int, ...]]] = {}
            for g in groups:
                for s in g:
                    key = tuple(s)
                    if key not in distinct:
                        distinct[key] = 0.0
                        by_len.setdefault(len(key), []).append(key)
            for n, seqs in sorted(by_len.items(), reverse=True):
                per = max(1, 16384 // n)
                for k in range(0, len(seqs), per):
                    part = seqs[k : k + per]
                    for key, s in zip(part, head(torch.tensor(part), None), strict=True):
                        distinct[key] = s
                    tokens += n * len(part)
            padded = tokens
            for r, g in enumerate(groups):
                scores[r] = [distinct[tuple(s)] for s in g]
    loop = time.perf_counter() - t0
    result.write_text(json.dumps({"scores": scores, "loop_seconds": loop, "tokens": tokens, "padded": padded}))


# ---------------------------------------------------------------------------------------------- the run
def accuracy(scores: list[list[float]]) -> float:
    return sum(g[0] > max(g[1:]) for g in scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prompt-cache", action="store_true", help="prompts as long as answers: half of each sequence's tokens"
    )
    parser.add_argument("--child", choices=("standin", "limit"))
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--input", type=Path)
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.checkpoint, args.input, args.result)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    model = make_model()
    pairs = make_pairs(args.pairs, args.seed, prompt_median=30 if args.prompt_cache else 20)
    answers = answers_of(pairs)
    n_answers = sum(map(len, answers))

    # vhtool score on every answer's score record: the reference every method is compared with
    flat = WORK / "answers.jsonl"
    flat.write_text("".join(json.dumps(a) + "\n" for g in answers for a in g))
    ref_out = WORK / "reference.jsonl"
    ref_out.unlink(missing_ok=True)
    measured([VHTOOL, "score", str(model), "-i", str(flat), "-o", str(ref_out), "--json"])
    ref_flat = [json.loads(line)["score"] for line in ref_out.read_text().splitlines()]
    ref, k = [], 0
    for g in answers:
        ref.append(ref_flat[k : k + len(g)])
        k += len(g)

    rows: dict[str, dict[str, Any]] = {}
    for label, extra in (("vhtool evaluate", []), ("  --no-prompt-cache", ["--no-prompt-cache"])):
        out = WORK / "evaluate.jsonl"
        out.unlink(missing_ok=True)
        cmd = [VHTOOL, "evaluate", str(model), "-i", str(pairs), "-o", str(out), "--json", *extra]
        stdout, wall, rss = measured(cmd)
        summary = json.loads(stdout)["summary"]
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        got = [[r["chosen"], *(r["rejected"] if isinstance(r["rejected"], list) else [r["rejected"]])] for r in recs]
        rows[label] = {
            "wall_s": wall,
            "loop_s": summary["seconds"],
            "rss_mib": rss,
            "accuracy": summary["accuracy"],
            "scores": got,
            "tokens": summary["forwarded_tokens"],
            "padded": summary["padded_tokens"],
            "prompt_cache": summary["prompt_cache"],
        }
    for kind, label in (("standin", "RewardBench loop"), ("limit", "limit")):
        res = WORK / f"{kind}.json"
        cmd = [sys.executable, __file__, "--child", kind, "--checkpoint", str(model), "--input", str(pairs)]
        _, wall, rss = measured([*cmd, "--result", str(res)])
        doc = json.loads(res.read_text())
        rows[label] = {
            "wall_s": wall,
            "loop_s": doc["loop_seconds"],
            "rss_mib": rss,
            "accuracy": accuracy(doc["scores"]),
            "scores": doc["scores"],
            "tokens": doc["tokens"],
            "padded": doc["padded"],
        }
    report: dict[str, Any] = {
        "pairs": args.pairs,
        "answers": n_answers,
        "threads": THREADS,
        "prompt_median_words": 30 if args.prompt_cache else 20,
        "prompt_cache": rows["vhtool evaluate"]["prompt_cache"],
        "methods": {},
    }
    print(f"{args.pairs} pairs, {n_answers} answers; reference accuracy (vhtool score) {accuracy(ref):.4f}")
    cache = rows["vhtool evaluate"]["prompt_cache"]
    print(
        f"prompt cache {cache['state']}: {cache['prompts']} prompts run once for {cache['answers']} answers, "
        f"{cache['tokens_saved']} tokens not recomputed"
    )
    print(
        f"{'method':<20}{'pairs/s':>9}{'loop p/s':>10}{'wall s':>8}{'RSS MiB':>9}{'accuracy':>10}"
        f"{'padding':>9}{'max |diff|':>12}"
    )
    for label, row in rows.items():
        diff = max(abs(a - b) for g, h in zip(row["scores"], ref, strict=True) for a, b in zip(g, h, strict=True))
        entry = {
            "pairs_per_s": args.pairs / row["wall_s"],
            "loop_pairs_per_s": args.pairs / row["loop_s"],
            "wall_s": row["wall_s"],
            "loop_s": row["loop_s"],
            "peak_rss_mib": row["rss_mib"],
            "accuracy": row["accuracy"],
            "tokens": row["tokens"],
            "padded_tokens": row["padded"],
            "padding_fraction": 1 - row["tokens"] / row["padded"] if row["padded"] else 0.0,
            "max_abs_diff_from_vhtool_score": diff,
        }
        report["methods"][label] = entry
        print(
            f"{label:<20}{entry['pairs_per_s']:>9.1f}{entry['loop_pairs_per_s']:>10.1f}{row['wall_s']:>8.1f}"
            f"{row['rss_mib']:>9.0f}{row['accuracy']:>10.4f}{entry['padding_fraction']:>9.1%}{diff:>12.2e}"
        )
    m = report["methods"]
    plain = m["  --no-prompt-cache"]["loop_pairs_per_s"]
    report["vhtool_vs_limit_loop"] = plain / m["limit"]["loop_pairs_per_s"]
    report["vhtool_vs_rewardbench_loop"] = plain / m["RewardBench loop"]["loop_pairs_per_s"]
    report["prompt_cache_speedup_loop"] = m["vhtool evaluate"]["loop_pairs_per_s"] / plain
    report["prompt_cache_vs_limit_loop"] = m["vhtool evaluate"]["loop_pairs_per_s"] / m["limit"]["loop_pairs_per_s"]
    print(
        f"vhtool evaluate's loop without the cache: {report['vhtool_vs_limit_loop']:.0%} of the limit's, "
        f"{report['vhtool_vs_rewardbench_loop']:.2f}x the RewardBench loop's; the prompt cache: "
        f"{report['prompt_cache_speedup_loop']:.2f}x that ({report['prompt_cache_vs_limit_loop']:.2f}x the limit)"
    )
    name = "results-prompt-cache.json" if args.prompt_cache else "results.json"
    (WORK / name).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
