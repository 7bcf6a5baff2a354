"""Benchmark of ``vhtool score`` against a TRL-style scoring loop (one run, same data, same machine).

    .venv/bin/python scripts/bench_score.py [--records 200] [--llama-records 16] [--skip-llama] [--skip-gpt2]

Defaults keep one run near 10 minutes on a 2-core AVX2 machine (GPT-2 part ~4 min, 1B part ~7 min: the
TRL-style loop is the slow half); ``--records 1000`` is the issue's full size (~20 min there).

Models: a GPT-2-small-sized random model (``GPT2Config()`` defaults) in float32, and the ~1.1B random
Llama of ``benchlib.make_llama`` (``bench-work/llama-1b``) in bfloat16, both ``vhtool init``-ed. Data:
pre-tokenised ``input_ids`` records (random ids in the model's vocabulary) with lognormal lengths
(median 96, sigma 0.8) clipped to 16-512 tokens; the 1B model scores the first ``--llama-records``.

* ``vhtool score``: the real CLI in a child process (``--json -o FILE``); its tokens/s is the summary's
  (scoring loop only, model load excluded).
* TRL-style loop: a child process with ``trl.experimental.ppo.AutoModelForCausalLMWithValueHead``;
  records in file order, fixed batch of 8, right-padded, the full forward with logits, the value read at
  each last real token; tokens/s over the loop only.

Useful GFLOP/s = (2 x non-embedding params x real tokens + 2 x layers x width x sum(len^2)) / seconds (the
attention term counts the causal half of QK^T and AV), against the machine's matmul peak measured in
the same run (the best ``F.linear`` of a few of the model's shapes, in the same dtype). Peak RSS is each child's own
(``wait4``). Threads: 2 (``torch.set_num_threads(2)``, ``OMP_NUM_THREADS=2``). Results are printed and
written to ``bench-work/score/results.json``. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

VHTOOL = str(Path(sys.executable).parent / "vhtool")
THREADS = 2


# ---------------------------------------------------------------------------------------------- children
def _spawn_measured(cmd: list[str]) -> tuple[str, float, float]:
    """Runs ``cmd``, reaped with ``wait4``; returns (stdout, wall seconds, the child's own peak RSS in MiB)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        import tempfile

        with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
            proc = subprocess.Popen(cmd, env=env, stdout=out_f, stderr=err_f, stdin=devnull)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            code = os.waitstatus_to_exitcode(status)
            proc.returncode = code
            out_f.seek(0)
            err_f.seek(0)
            out, err = out_f.read().decode(), err_f.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}): {err[-3000:]}")
    return out, wall, usage.ru_maxrss / 1024


def trl_worker(ckpt: str, data: str, dtype: str, out: str) -> None:
    """The TRL-style loop: file order, batch 8, right padding, full forward with logits."""
    import torch

    torch.set_num_threads(THREADS)
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    from trl.experimental.ppo import AutoModelForCausalLMWithValueHead

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    # TRL 1.12.0 cannot find the value head of a local *sharded* checkpoint (it takes the directory for a Hub
    # id), so build it from the loaded model and read v_head.* from the checkpoint ourselves.
    base = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dt)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    index = Path(ckpt) / "model.safetensors.index.json"
    files = (
        sorted({f for k, f in json.loads(index.read_text())["weight_map"].items() if k.startswith("v_head.")})
        if index.exists()
        else ["model.safetensors"]
    )
    head: dict[str, Any] = {}
    for f in files:
        with safe_open(str(Path(ckpt) / f), framework="pt") as fh:
            head.update({k[len("v_head.") :]: fh.get_tensor(k) for k in fh.keys() if k.startswith("v_head.")})  # noqa: SIM118
    model.v_head.load_state_dict(head)
    model.eval()
    with open(data, encoding="utf-8") as fh:
        records = [json.loads(line)["input_ids"] for line in fh]
    pad = 0
    scores: list[float] = []
    tokens = padded = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(records), 8):
            batch = records[start : start + 8]
            width = max(len(r) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            _logits, _, values = model(input_ids=ids, attention_mask=mask)
            last = mask.sum(-1) - 1
            scores += values[torch.arange(len(batch)), last].float().tolist()
            tokens += int(mask.sum())
            padded += ids.numel()
    seconds = time.perf_counter() - t0
    Path(out).write_text(json.dumps({"seconds": seconds, "tokens": tokens, "padded": padded, "scores": scores}))


# ---------------------------------------------------------------------------------------------- set-up
def lengths(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(mean=np.log(96), sigma=0.8, size=n)), 16, 512).astype(int).tolist()


def write_data(path: Path, lens: list[int], vocab: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for n in lens:
            fh.write(json.dumps({"input_ids": rng.integers(0, vocab, size=n).tolist()}) + "\n")
    return path


def vhtool_init(src: Path, out: Path) -> Path:
    if not (out / "vhtool.json").exists():
        subprocess.run([VHTOOL, "init", str(src), "-o", str(out), "--link", "hardlink", "--quiet"], check=True)
    return out


def make_gpt2_small(work: Path) -> Path:
    base = work / "gpt2-small"
    if not (base / "config.json").exists():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(base)
    return vhtool_init(base, work / "gpt2-small-vh")


def make_llama_1b() -> Path:
    from benchlib import make_llama

    d = ROOT / "bench-work" / "llama-1b"
    waited = 0
    while d.exists() and not (d / ".complete").exists() and waited < 900:
        time.sleep(10)  # another helper is writing it
        waited += 10
    make_llama(d, "1b")
    return vhtool_init(d, ROOT / "bench-work" / "score" / "llama-1b-vh")


def linear_peak(dtype: str, width: int, inner: int, seconds: float = 1.0) -> float:
    """This machine's matmul peak in ``dtype`` (GFLOP/s, 2 threads): the best of ``F.linear`` on a few shapes.

    ``F.linear`` is the op the models run; shapes are the model's own (512 tokens x width -> inner, and
    back) and a square 2048 one, each timed for ``seconds``.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.set_num_threads(THREADS)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    best = 0.0
    for m, k, n in ((512, width, inner), (512, inner, width), (2048, 2048, 2048)):
        x = torch.randn(m, k, dtype=dt)
        w = torch.randn(n, k, dtype=dt)
        F.linear(x, w)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            F.linear(x, w)
            count += 1
        best = max(best, count * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def model_shape(ckpt: Path) -> dict[str, int]:
    """Non-embedding parameter count (what the backbone multiplies), layers and width, from the headers."""
    from vhtool.checkpoint.layout import open_checkpoint

    ck = open_checkpoint(ckpt)
    cfg = ck.config
    total = 0
    for name, loc in ck.tensors.items():
        info = loc.info
        if any(s in name for s in ("wte", "wpe", "embed_tokens", "lm_head", "v_head")):
            continue
        if len(info.shape) == 2:
            total += int(np.prod(info.shape))
    layers = cfg.get("n_layer") or cfg.get("num_hidden_layers")
    width = cfg.get("n_embd") or cfg.get("hidden_size")
    inner = cfg.get("n_inner") or cfg.get("intermediate_size") or 4 * int(width)
    return {"matmul_params": total, "layers": int(layers), "width": int(width), "inner": int(inner)}


def bench(name: str, ckpt: Path, data: Path, lens: list[int], dtype: str, work: Path) -> dict[str, Any]:
    shape = model_shape(ckpt)
    print(f"[{name}] {len(lens)} records, {sum(lens)} tokens, {dtype}; matmul peak ...", flush=True)
    peak = linear_peak(dtype, shape["width"], shape["inner"])
    flops = 2 * shape["matmul_params"] * sum(lens) + 2 * shape["layers"] * shape["width"] * sum(n * n for n in lens)
    out_file = work / f"{name}-scores.jsonl"
    out_file.unlink(missing_ok=True)
    print(f"[{name}] peak {peak:.1f} GFLOP/s; vhtool score ...", flush=True)
    cmd = [VHTOOL, "score", str(ckpt), "-i", str(data), "--json", "-o", str(out_file), "--dtype", dtype]
    stdout, ours_wall, ours_rss = _spawn_measured([*cmd, "--device", "cpu", "--force"])
    summary = json.loads(stdout)["summary"]
    ours_scores = [json.loads(line)["score"] for line in out_file.read_text().splitlines()]
    print(f"[{name}] vhtool: {summary['tokens_per_s']:.1f} tokens/s; TRL-style loop ...", flush=True)
    trl_out = work / f"{name}-trl.json"
    _, trl_wall, trl_rss = _spawn_measured(
        [
            sys.executable,
            __file__,
            "--worker",
            "trl",
            "--ckpt",
            str(ckpt),
            "--data",
            str(data),
            "--dtype",
            dtype,
            "--out",
            str(trl_out),
        ]
    )
    trl = json.loads(trl_out.read_text())
    trl_tps = trl["tokens"] / trl["seconds"]
    diff = float(np.max(np.abs(np.array(ours_scores) - np.array(trl["scores"]))))
    result = {
        "model": name,
        "dtype": dtype,
        "records": len(lens),
        "tokens": sum(lens),
        "matmul_peak_gflops": round(peak, 2),
        "vhtool": {
            "tokens_per_s": summary["tokens_per_s"],
            "seconds": summary["seconds"],
            "wall_s": round(ours_wall, 2),
            "peak_rss_mib": round(ours_rss, 1),
            "padding_fraction": summary["padding_fraction"],
            "batches": summary["batches"],
            "useful_gflops": round(flops / summary["seconds"] / 1e9, 2),
            "pct_of_peak": round(100 * flops / summary["seconds"] / 1e9 / peak, 1),
        },
        "trl_loop": {
            "tokens_per_s": round(trl_tps, 2),
            "seconds": round(trl["seconds"], 3),
            "wall_s": round(trl_wall, 2),
            "peak_rss_mib": round(trl_rss, 1),
            "padding_fraction": round(1 - trl["tokens"] / trl["padded"], 4),
            "useful_gflops": round(flops / trl["seconds"] / 1e9, 2),
            "pct_of_peak": round(100 * flops / trl["seconds"] / 1e9 / peak, 1),
        },
        "speedup": round(summary["tokens_per_s"] / trl_tps, 2),
        "max_abs_score_diff": diff,
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200, help="GPT-2-small records (default 200).")
    ap.add_argument("--llama-records", type=int, default=16, help="records for the 1B Llama (default 16).")
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "trl":
        trl_worker(args.ckpt, args.data, args.dtype, args.out)
        return
    import torch

    torch.set_num_threads(THREADS)
    work = ROOT / "bench-work" / "score"
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    lens = lengths(max(args.records, args.llama_records))
    if not args.skip_gpt2:
        ckpt = make_gpt2_small(work)
        data = write_data(work / "data-gpt2.jsonl", lens[: args.records], 50257)
        results.append(bench("gpt2-small", ckpt, data, lens[: args.records], "float32", work))
    if not args.skip_llama:
        ckpt = make_llama_1b()
        data = write_data(work / "data-llama.jsonl", lens[: args.llama_records], 32000)
        results.append(bench("llama-1b", ckpt, data, lens[: args.llama_records], "bfloat16", work))
    doc = {"threads": THREADS, "total_seconds": round(time.perf_counter() - t0, 1), "results": results}
    (work / "results.json").write_text(json.dumps(doc, indent=2))
    print(
        f"\n{'model':12} {'dtype':9} {'rec':>5} {'vhtool tok/s':>13} {'TRL tok/s':>10} {'x':>6} "
        f"{'GFLOP/s':>8} {'peak':>7} {'%peak':>6} {'RSS MiB (v/TRL)':>17}"
    )
    for r in results:
        v, t = r["vhtool"], r["trl_loop"]
        print(
            f"{r['model']:12} {r['dtype']:9} {r['records']:>5} {v['tokens_per_s']:>13.1f} "
            f"{t['tokens_per_s']:>10.1f} {r['speedup']:>6.2f} {v['useful_gflops']:>8.1f} "
            f"{r['matmul_peak_gflops']:>7.1f} {v['pct_of_peak']:>6.1f} "
            f"{v['peak_rss_mib']:>8.0f}/{t['peak_rss_mib']:<8.0f}"
        )
    print(f"total {doc['total_seconds']} s; results in {work / 'results.json'}")


if __name__ == "__main__":
    main()
