"""Benchmark of ``vhtool serve`` against a faithful stand-in for OpenRLHF's ``serve_rm`` (one run, same model/texts).

    .venv/bin/python scripts/bench_serve.py [--texts 256] [--clients 1,16,64] [--device cpu] [--layers 4] [--width 256]

Model: a random GPT-2-style ``GPT2ForSequenceClassification`` (num_labels 1; ``--layers`` x ``--width``, 512
positions) with the built-in tiny-gpt2 tokenizer, seeded: a reward model as most reward models are stored.
Texts: seeded random words with lognormal lengths (median 40 words, sigma 0.8, clipped to 4-150 words).

Load (OpenRLHF's client, ``openrlhf/utils/agent.py`` ``_fetch_rewards_via_http``): N concurrent clients, one text
per request, a new ``aiohttp.ClientSession`` (connection) per request, ``{"query": [t], "prompts": [...], "labels":
[...]}``; each client takes the next text until all are scored. Reported per server and N: texts/s (texts / wall
time of the whole load), p50 and p99 request latency, errors, and the largest difference of the rewards from
the reference: for ``vhtool serve``, ``vhtool score``'s (Scorer in-process, same options); for the stand-in, its
own code run in-process on each text alone (serve_rm appends an eos and reads the score there, so its numbers are
not the classifier's: that is a convention, not an error, and it does not change the cost).

* ``vhtool serve``: the real CLI in a child process (``--port 0 --json``, default batching options).
  Both servers run at once and the loads alternate (vhtool, stand-in, next N), so a change in the machine's
  load during the run affects both alike.
* ``serve_rm`` stand-in: a child process running the code of ``openrlhf/cli/serve_rm.py`` on the same stack
  (Starlette + uvicorn; serve_rm uses FastAPI, i.e. Starlette underneath), with uvicorn's and serve_rm's INFO
  logging (to a file): ``await request.json()``, then *inside the async handler* ``get_reward`` (strip pad/eos and
  append one eos, tokenise with left padding and truncation to ``max_len``), one forward of the request's texts
  under ``torch.no_grad()`` as OpenRLHF's ``RewardModel.forward`` runs it (the backbone with the mask and
  mask-derived position ids, the score head, the value at the last real token), log the answer. Attention is the
  checkpoint's default (SDPA), the best kernel on this device, as ``--flash_attn`` is on a GPU (serve_rm's default
  is eager attention: not used, so the stand-in is not slowed by a flag its users would set).
* limit: the same texts, in-process, tokenised and planned by length (``plan_batches``) and scored batch by batch
  with ``Scorer.score_batch``: texts/s of the forward alone, with the same torch threads.

Threads: every process gets ``OMP_NUM_THREADS=--threads`` and, by default, ``OMP_WAIT_POLICY=PASSIVE``. Without it
libgomp's idle threads spin (up to ~300,000 polls) after each parallel region whenever a process's OpenMP threads
fit the cores; on a small shared CPU (here 2 cores, the client process and the other server on them too) a
forward's threads then spin at every barrier while their partner waits to be scheduled. That hit the stand-in
(the model on the event loop thread: 2 OpenMP threads for 2 cores) and not ``vhtool serve`` (its model thread's
team comes on top of the main thread's, so libgomp throttles the spinning): profiled with ``perf``, 77% of the
stand-in's time was libgomp's spin loop, and one request took ~10x as long as the same forward alone. PASSIVE
gives both servers the same, non-spinning threads; ``--omp-wait-policy unset`` reproduces the artefact.

Results are printed and written to ``bench-work/serve/results.json``. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "hex"]

STAND_IN = r"""
# openrlhf/cli/serve_rm.py, line for line where it matters for speed and scores, on this benchmark's model:
# RewardModelProxy.get_reward + tokenize_fn, and RewardModel.forward (openrlhf/models/model.py) over the
# checkpoint's own backbone and score head. Run as a script it serves; exec'd with another __name__ it only defines
# get_reward (the bench's in-process reference for the stand-in's own scores).
import logging, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path, device, max_len = sys.argv[1], sys.argv[3], int(sys.argv[4])
logger = logging.getLogger("serve_rm")
model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()  # "auto" dtype: fp32 here
backbone, score_head = getattr(model, model.base_model_prefix), model.score
tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")  # get_tokenizer(..., "left", ...)

def reward_model(input_ids, attention_mask):  # RewardModel.forward, packing_samples=False
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    outputs = backbone(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    values = score_head(outputs["last_hidden_state"]).squeeze(-1)
    eos_indices = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
    return values.gather(dim=1, index=eos_indices).squeeze(1)

def tokenize_fn(texts):
    batch = tokenizer(texts, return_tensors="pt", max_length=max_len, padding=True, truncation=True)
    return {k: v.to(device) for k, v in batch.items()}

def get_reward(queries):  # batch_size None: one forward of the request's texts
    for i in range(len(queries)):  # "remove pad_token", then one eos, as serve_rm does
        queries[i] = queries[i].strip(tokenizer.pad_token).strip(tokenizer.eos_token) + tokenizer.eos_token
    with torch.no_grad():
        inputs = tokenize_fn(queries)
        return reward_model(inputs["input_ids"], inputs["attention_mask"]).tolist()

if __name__ == "__main__":
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    port, log_file = int(sys.argv[2]), sys.argv[5]
    logging.basicConfig(filename=log_file, level=logging.INFO)  # serve_rm logs at INFO (init_logger)

    async def handler(request: Request):
        data = await request.json()
        rewards = get_reward(data.get("query"))  # the model runs inside the async handler, as in serve_rm
        result = {"rewards": rewards, "scores": rewards, "extra_logs": {"dummy_scores": rewards}}
        logger.info(f"Sent JSON: {result}")
        return JSONResponse(result)

    app = Starlette(routes=[Route("/get_reward", handler, methods=["POST"])])  # FastAPI is Starlette underneath
    print("ready", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", log_config=None)  # serve_rm: log_level info
"""


def make_model(out: Path, *, layers: int, width: int) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from vhtool.hub import resolve_source

    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(resolve_source("builtin:tiny-gpt2").path)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=512,
        n_embd=width,
        n_layer=layers,
        n_head=max(1, width // 64),
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    GPT2ForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = int(min(150, max(4, rng.lognormvariate(mu=3.69, sigma=0.8))))  # median e^3.69 = 40 words
        out.append(" ".join(rng.choice(WORDS) for _ in range(words)))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def load(url: str, texts: list[str], clients: int) -> dict[str, Any]:
    """OpenRLHF-style load: ``clients`` concurrent loops, one text per request, a new session per request."""
    import aiohttp

    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for k, t in enumerate(texts):
        queue.put_nowait((k, t))
    rewards: list[float | None] = [None] * len(texts)
    latencies: list[float] = []
    errors = 0
    timeout = aiohttp.ClientTimeout(total=180)

    async def client() -> None:
        nonlocal errors
        while True:
            try:
                k, text = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:  # noqa: SIM117 (as OpenRLHF)
                    async with session.post(url, json={"query": [text], "prompts": [""], "labels": [""]}) as r:
                        r.raise_for_status()
                        rewards[k] = (await r.json())["rewards"][0]
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "texts_per_s": len(texts) / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "errors": errors,
        "rewards": rewards,
    }


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{cmd[:4]} did not start (exit {proc.wait()})")
    return proc, line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every process (OMP_NUM_THREADS)")
    ap.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY in every process (PASSIVE: idle OpenMP threads sleep; 'unset': libgomp's default)",
    )
    ap.add_argument("--work", default=str(ROOT / "bench-work" / "serve"))
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / f"rm-{args.layers}x{args.width}", layers=args.layers, width=args.width)
    texts = make_texts(args.texts)
    max_len = 512
    omp = {"OMP_NUM_THREADS": str(args.threads)}
    if args.omp_wait_policy.lower() != "unset":
        omp["OMP_WAIT_POLICY"] = args.omp_wait_policy
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **omp}
    os.environ.update(omp)  # before torch is imported: libgomp reads them once

    import torch

    from vhtool.models.scoring import ScoreOptions, Scorer, plan_batches
    from vhtool.models.scoring.inputs import InputItem

    torch.set_num_threads(args.threads)
    scorer = Scorer(model, options=ScoreOptions(device=args.device, max_length=max_len))
    prepared = scorer.prepare([InputItem(k, k + 1, t) for k, t in enumerate(texts)])
    seqs = [p.ids or [] for p in prepared]
    # vhtool score's numbers (reference) and the limit: the forward alone, length-bucketed, same threads
    plan = plan_batches([len(s) for s in seqs], max_batch_tokens=16384, batch_size=64)
    reference: list[float] = [0.0] * len(seqs)
    rates = []
    for _ in range(2):  # the first pass warms the allocator up; the best pass is the limit
        t0 = time.perf_counter()
        for batch in plan:
            scores, _ = scorer.score_batch([seqs[k] for k in batch])
            for k, s in zip(batch, scores):
                reference[k] = s
        rates.append(len(seqs) / (time.perf_counter() - t0))
    limit = max(rates)
    del scorer
    # the stand-in's own scores, one text per forward in-process: what serve_rm answers for each text
    stand_in: dict[str, Any] = {"__name__": "stand_in_reference"}
    argv, sys.argv = sys.argv, ["stand-in", str(model), "0", args.device, str(max_len), ""]
    try:
        exec(STAND_IN, stand_in)  # noqa: S102 (our own code, the same text the stand-in process runs)
    finally:
        sys.argv = argv
    stand_in_reference = [stand_in["get_reward"]([t])[0] for t in texts]
    del stand_in
    tokens = [len(s) for s in seqs]
    print(
        f"model {args.layers}x{args.width} GPT-2 seq-cls, {len(texts)} texts, tokens median "
        f"{statistics.median(tokens):.0f} max {max(tokens)}, {args.threads} threads, {args.device}, "
        f"OMP_WAIT_POLICY {omp.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(f"limit (in-process, length-bucketed forward): {limit:,.1f} texts/s")

    results: dict[str, Any] = {
        "limit_texts_per_s": limit,
        "texts": len(texts),
        "threads": args.threads,
        "omp_wait_policy": omp.get("OMP_WAIT_POLICY", "unset"),
        "device": args.device,
        "model": f"{args.layers}x{args.width}",
        "runs": [],
    }
    servers = {
        "vhtool serve": [
            sys.executable,
            "-m",
            "vhtool",
            "serve",
            str(model),
            "--port",
            "0",
            "--json",
            "--quiet",
            "--device",
            args.device,
            "--max-length",
            str(max_len),
        ],
        "serve_rm stand-in": [
            sys.executable,
            "-c",
            STAND_IN,
            str(model),
            "PORT",
            args.device,
            str(max_len),
            str(work / "serve_rm.log"),
        ],
    }
    clients = [int(c) for c in args.clients.split(",")]
    procs: list[subprocess.Popen[str]] = []
    urls: dict[str, str] = {}
    try:
        for name, cmd in servers.items():  # both up at once; the loads alternate, so drift hits both alike
            port = free_port()
            proc, line = start([str(port) if c == "PORT" else c for c in cmd], env)
            procs.append(proc)
            urls[name] = json.loads(line)["url"] if name == "vhtool serve" else f"http://127.0.0.1:{port}"
            for _ in range(300):  # the stand-in prints before uvicorn listens
                if asyncio.run(load(urls[name] + "/get_reward", texts[:1], 1))["errors"] == 0:
                    break
                time.sleep(0.1)
            asyncio.run(load(urls[name] + "/get_reward", texts[:8], 4))  # warm-up
        print(
            f"{'server':<20} {'clients':>7} {'texts/s':>9} {'% limit':>8} {'p50 ms':>8} {'p99 ms':>9} "
            f"{'errors':>6} {'max |diff|':>10}"
        )
        for n in clients:
            for name, url in urls.items():
                r = asyncio.run(load(url + "/get_reward", texts, n))
                # vhtool serve against vhtool score; the stand-in against its own in-process scores (serve_rm
                # appends an eos and reads the score there: another number than the model's classifier reads)
                want = reference if name == "vhtool serve" else stand_in_reference
                diffs = [abs(a - b) for a, b in zip(r.pop("rewards"), want) if a is not None]
                r.update(
                    server=name,
                    clients=n,
                    max_abs_diff=max(diffs) if diffs else None,
                    pct_limit=100 * r["texts_per_s"] / limit,
                )
                results["runs"].append(r)
                print(
                    f"{name:<20} {n:>7} {r['texts_per_s']:>9,.1f} {r['pct_limit']:>7.0f}% {r['p50_ms']:>8.1f} "
                    f"{r['p99_ms']:>9.1f} {r['errors']:>6} {r['max_abs_diff'] or 0:>10.2e}",
                    flush=True,
                )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=120)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"written {work / 'results.json'}")


if __name__ == "__main__":
    main()
