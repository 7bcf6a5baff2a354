"""Benchmark ``vhtool convert`` on the ~1.1B Llama: whole-process wall time and peak RSS per conversion.

The policy is ``vhtool init`` of benchlib's 1B Llama (bf16, 3 shards, 2.2 GB, untied LM head), kept in
``bench-work/convert/``. Cases, each run ``--runs`` times (median wall, max of the child's own peak RSS
from wait4), output removed before each run:

* vhtool -> seq-cls (drops the 262 MB untied LM head: one shard rewritten, the others copied whole);
* seq-cls -> token-cls (a classifier back to a classifier with a bias; seq-cls -> vhtool is refused for
  an untied Llama, which is measured too, as the refusal);
* vhtool -> sidecar and sidecar -> vhtool (a full round trip; tensor bytes compared afterwards);
* optionally (``--baseline``) what people do today: transformers loads the policy as
  ``AutoModelForSequenceClassification`` and ``save_pretrained``s it.

Goal (issue 10): peak RSS <= 400 MiB. Run from the repo root::

    .venv/bin/python scripts/bench_convert.py [--runs 1] [--baseline]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import Run, make_llama, median_runs, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench-work"
PY = sys.executable
VHTOOL = str(Path(PY).with_name("vhtool"))
GOAL_MIB = 400.0

BASELINE = (
    "import sys, transformers as tf\n"
    "m = tf.AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=1, dtype='auto')\n"
    "m.save_pretrained(sys.argv[2])\n"
)


def _clean(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _convert(src: Path, out: Path, to: str, runs: int) -> Run:
    return median_runs(
        lambda: [VHTOOL, "convert", str(src), "--to", to, "-o", str(out), "-q"], runs, lambda: _clean(out)
    )


def _tensor_bytes_equal(a: Path, b: Path) -> bool:
    """Every tensor of ``a`` and ``b`` (weights and sidecar) has the same name, dtype, shape and bytes."""
    import hashlib

    from vhtool.checkpoint.layout import open_checkpoint

    def digests(d: Path) -> dict[str, tuple[str, tuple[int, ...], str]]:
        ckpt = open_checkpoint(d)
        hdrs = list(ckpt.headers.values()) + ([ckpt.sidecar] if ckpt.sidecar is not None else [])
        out = {}
        for hdr in hdrs:
            with open(hdr.path, "rb") as fh:
                for t in hdr.tensors.values():
                    fh.seek(hdr.data_start + t.begin)
                    h = hashlib.sha256()
                    left = t.nbytes
                    while left:
                        chunk = fh.read(min(left, 64 << 20))
                        h.update(chunk)
                        left -= len(chunk)
                    out[t.name] = (t.dtype, t.shape, h.hexdigest())
        return out

    return digests(a) == digests(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--baseline", action="store_true", help="Also time transformers load + save (heavy).")
    args = parser.parse_args()

    one_b = make_llama(WORK / "llama-1b", "1b")
    work = WORK / "convert"
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "llama-1b-vh"
    if not (policy / "vhtool.json").exists():
        _clean(policy)
        subprocess.run([VHTOOL, "init", str(one_b), "-o", str(policy), "--v-head-init", "normal", "-q"], check=True)
    seq, tok, side, back = (
        work / n for n in ("llama-1b-seqcls", "llama-1b-tokcls", "llama-1b-sidecar", "llama-1b-back")
    )

    rows: list[tuple[str, Run]] = []
    rows.append(("vhtool -> seq-cls", _convert(policy, seq, "seq-cls", args.runs)))
    rows.append(("seq-cls -> token-cls", _convert(seq, tok, "token-cls", args.runs)))
    refused = subprocess.run(
        [VHTOOL, "convert", str(seq), "--to", "vhtool", "-o", str(work / "refused")], capture_output=True, text=True
    )
    rows.append(("vhtool -> sidecar", _convert(policy, side, "sidecar", args.runs)))
    rows.append(("sidecar -> vhtool", _convert(side, back, "vhtool", args.runs)))
    identical = _tensor_bytes_equal(policy, back)
    if args.baseline:
        out = work / "baseline-seqcls"
        _clean(out)
        rows.append(
            ("baseline: transformers load+save seq-cls", run_measured([PY, "-c", BASELINE, str(policy), str(out)]))
        )
        _clean(out)

    print(f"{'case':44s} {'wall':>8s} {'peak RSS':>11s}")
    for name, run in rows:
        flag = "" if name.startswith("baseline") or run.max_rss_mib <= GOAL_MIB else "  > goal"
        print(f"{name:44s} {run.wall:7.2f}s {run.max_rss_mib:8.1f} MiB{flag}")
    print(f"seq-cls -> vhtool (untied Llama): exit {refused.returncode}: {refused.stderr.strip()[:160]}")
    print(f"vhtool -> sidecar -> vhtool tensors byte-identical: {identical}")
    worst = max(r.max_rss_mib for n, r in rows if not n.startswith("baseline"))
    verdict = "OK" if worst <= GOAL_MIB else "MISSED"
    print(f"max peak RSS of vhtool convert: {worst:.1f} MiB (goal <= {GOAL_MIB:.0f} MiB): {verdict}")


if __name__ == "__main__":
    main()
