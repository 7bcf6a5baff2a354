"""The reliability campaign behind README's "Reliability" figures, at a larger scale than the tests.

Runs, with real child processes and the same harness as ``tests/test_reliability.py`` and ``tests/test_fuzz.py``:

* SIGKILL at random moments of every writing command (fresh OUT and ``--force`` replacement, with and
  without fsync); after each kill OUT must be absent, byte-identical to before (full sha256), or a complete
  new checkpoint that passes ``verify --hash``; the next run must succeed and leave no sibling behind;
* two runs racing for one OUT;
* a file-size limit (RLIMIT_FSIZE) mid-write, and a full disk (a 32 MB tmpfs in a user namespace, when
  ``unshare -rm`` is allowed here);
* every hostile source of the test suite against ``init`` (exit 2) and ``verify`` (exit 1);
* destructive ``-o``/``--force`` attempts: every writing command with OUT spelled as the current directory,
  an ancestor, the home directory, the input (relative, absolute, through a symlink), a folder inside the
  input, a user's git project and a plain file; each must exit 2 and leave every byte in place;
* the hypothesis fuzz strategies with ``VHTOOL_FUZZ_SCALE`` times the test suite's examples.

Usage: ``python scripts/reliability_report.py [--kills-per-campaign 5] [--fuzz-scale 10] [--races 6]``.
Work files go to ``bench-work/reliability/`` (git-ignored). Prints the figures and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "NO_COLOR": "1",
}.items():
    os.environ.setdefault(key, value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills-per-campaign", type=int, default=5)
    parser.add_argument("--fuzz-scale", type=int, default=10)
    parser.add_argument("--races", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "bench-work" / "reliability")
    args = parser.parse_args()
    os.environ["VHTOOL_FUZZ_SCALE"] = str(args.fuzz_scale)
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["HF_HOME"] = str(work / "hf_home")

    from tests import test_reliability as rel

    rng = random.Random(args.seed)
    figures: dict[str, Any] = {
        "kill_runs": 0,
        "kills": 0,
        "kills_mid_write": 0,
        "kill_states": {"absent": 0, "old": 0, "new": 0},
        "kill_failures": [],
        "races": 0,
        "race_failures": [],
        "write_failures_tried": 0,
        "write_failure_failures": [],
        "full_disk": "not run",
        "hostile_tried": 0,
        "hostile_failures": [],
        "destructive_tried": 0,
        "destructive_failures": [],
    }
    t0 = time.perf_counter()

    # ---------------------------------------------------------------- sources
    sources_dir = work / "sources"
    sources_dir.mkdir()
    model = rel.make_kill_model(sources_dir / "llama")
    policy = sources_dir / "policy"
    subprocess.run(rel.vhtool_argv("init", model, "-o", policy, "--no-fsync", "-q"), check=True)
    adapter = rel.make_reward_adapter(sources_dir / "adapter", rel.KILL_PRESET)
    sources = {"model": model, "policy": policy, "adapter": adapter}
    print(f"sources ready ({time.perf_counter() - t0:.0f} s)", flush=True)

    # ---------------------------------------------------------------- kills
    for case in rel.WRITE_CASES:
        out = work / "kill" / case.name / "out"
        for fsync in (True, False):
            for replace in (False, True):
                if replace and not out.exists():
                    continue
                # Kill at random fractions of a measured write, so kills land mid-write however fast it is.
                probe = work / "probe" / case.name / "out"
                shutil.rmtree(probe.parent, ignore_errors=True)
                probe.parent.mkdir(parents=True)
                window = rel.write_window(case.argv(sources, probe, 0, fsync), probe)
                delays = [("tmp", rng.uniform(0.0, 0.9) * window) for _ in range(args.kills_per_campaign)]
                if not replace:
                    shutil.rmtree(out.parent, ignore_errors=True)
                    delays[0] = ("start", rng.uniform(0.1, 0.5))
                try:
                    outcomes = rel.kill_campaign(
                        case, sources, out, fsync=fsync, delays=delays, full_hash=True, variant0=rng.randrange(1000)
                    )
                except AssertionError as exc:
                    figures["kill_failures"].append(f"{case.name} fsync={fsync} replace={replace}: {exc}")
                    continue
                for o in outcomes:
                    figures["kill_runs"] += 1
                    if o.killed:
                        figures["kills"] += 1
                        figures["kills_mid_write"] += int(o.saw_tmp)
                        figures["kill_states"][o.state] += 1
        print(f"kills: {case.name} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    # ---------------------------------------------------------------- races
    small = {"model": _small_model(sources_dir / "small")}
    for i in range(args.races):
        d = work / "race" / str(i)
        d.mkdir(parents=True)
        figures["races"] += 1
        try:
            _race(rel, small["model"], d / "out", force=bool(i % 2))
        except AssertionError as exc:
            figures["race_failures"].append(f"race {i}: {exc}")
    print(f"races done ({time.perf_counter() - t0:.0f} s)", flush=True)

    # ---------------------------------------------------------------- write failures
    for case in rel.WRITE_CASES:
        for replace in (False, True):
            d = work / "fsize" / f"{case.name}-{replace}"
            d.mkdir(parents=True)
            out = d / "out"
            figures["write_failures_tried"] += 1
            try:
                _fsize(rel, case, sources, out, replace=replace)
            except AssertionError as exc:
                figures["write_failure_failures"].append(f"{case.name} replace={replace}: {exc}")
    figures["full_disk"] = _full_disk(model)
    print(f"write failures done ({time.perf_counter() - t0:.0f} s)", flush=True)

    # ---------------------------------------------------------------- hostile inputs
    for name, build, message in rel.HOSTILE:
        d = work / "hostile" / name
        (d / "outside").mkdir(parents=True)
        build(d / "src", d / "outside")
        figures["hostile_tried"] += 1
        res = subprocess.run(rel.vhtool_argv("init", d / "src", "-o", d / "out"), capture_output=True, text=True)
        if res.returncode != 2 or message not in res.stderr or (d / "out").exists():
            figures["hostile_failures"].append(f"init {name}: exit {res.returncode} {res.stderr.strip()}")
        if name != "pickle-only":
            res = subprocess.run(rel.vhtool_argv("verify", d / "src"), capture_output=True, text=True)
            if res.returncode != 1:
                figures["hostile_failures"].append(f"verify {name}: exit {res.returncode}")
    print(f"hostile inputs done ({time.perf_counter() - t0:.0f} s)", flush=True)

    # ---------------------------------------------------------------- destructive -o / --force
    tried, failed = _destructive(rel, work / "destructive")
    figures["destructive_tried"], figures["destructive_failures"] = tried, failed
    print(f"destructive --force attempts done ({time.perf_counter() - t0:.0f} s)", flush=True)

    # ---------------------------------------------------------------- fuzz
    figures["fuzz"] = _fuzz(work / "fuzz")
    print(f"fuzz done ({time.perf_counter() - t0:.0f} s)", flush=True)

    lost = (
        len(figures["kill_failures"])
        + len(figures["race_failures"])
        + len(figures["write_failure_failures"])
        + len(figures["hostile_failures"])
        + len(figures["destructive_failures"])
        + figures["fuzz"]["failures"]
    )
    figures["data_lost_or_contract_broken"] = lost
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(figures, indent=2))
    _markdown(figures, args)
    return 1 if lost else 0


def _small_model(d: Path) -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    import benchlib

    return benchlib.make_llama(d, "tiny")


def _race(rel: Any, model: Path, out: Path, *, force: bool) -> None:
    if force:
        subprocess.run(rel.vhtool_argv("init", model, "-o", out, "--no-fsync", "-q"), check=True)
    argvs = [
        rel.vhtool_argv("init", model, "-o", out, "--seed", s, "--no-fsync", *(["--force"] if force else []))
        for s in (1, 2)
    ]
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for a in argvs]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 1], [0, 2], [0, 0]), results
    for rc, err in results:
        assert rc != 1 or "another vhtool run is writing" in err, err
    assert rel.leftovers(out) == set(), rel.leftovers(out)
    assert rel.verify_checkpoint(out, hash_all=True).ok


def _fsize(rel: Any, case: Any, sources: dict[str, Path], out: Path, *, replace: bool) -> None:
    before = None
    if replace:
        subprocess.run(case.argv(sources, out, 0, False), check=True, capture_output=True)
        before = rel.snapshot(out, full_hash=True)
    argv = case.argv(sources, out, 1, True) + (["--force"] if replace else [])
    res = subprocess.run(argv, capture_output=True, text=True, preexec_fn=rel._limit_file_size(8 << 20))
    assert res.returncode == 1, res.stderr
    assert "File too large" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert rel.leftovers(out) == set(), rel.leftovers(out)
    assert (rel.snapshot(out, full_hash=True) == before) if replace else not out.exists()


def _full_disk(model: Path) -> str:
    """``init`` into a 32 MB tmpfs (in a private user+mount namespace): ENOSPC mid-write must leave nothing."""
    if shutil.which("unshare") is None:
        return "not run (no unshare)"
    mnt = Path(tempfile.mkdtemp(prefix="vhtool-fulldisk-"))
    script = (
        f"mount -t tmpfs -o size=32m none {mnt} || exit 90; "
        f"{sys.executable} -m vhtool init {model} -o {mnt}/out 2>{mnt}.err; echo rc=$?; "
        f"ls -A {mnt}; df -k {mnt} | tail -1"
    )
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    try:
        err = Path(f"{mnt}.err").read_text() if Path(f"{mnt}.err").exists() else ""
    finally:
        Path(f"{mnt}.err").unlink(missing_ok=True)
        mnt.rmdir()
    if res.returncode == 90 or "rc=" not in res.stdout:
        return f"not run (cannot mount a tmpfs here: {res.stderr.strip()[:120]})"
    lines = res.stdout.split("\n")
    rc = next(line for line in lines if line.startswith("rc="))
    listing = [line for line in lines[lines.index(rc) + 1 : -2] if line.strip()]
    ok = rc == "rc=1" and "No space left on device" in err and not listing
    return (
        "passed" if ok else "FAILED"
    ) + f": {rc}, left in the full filesystem: {listing or 'nothing'}; {err.strip()}"


def _destructive(rel: Any, d: Path) -> tuple[int, list[str]]:
    """Every writing command, OUT spelled as something that must never be replaced, with and without --force."""
    from tests.helpers import TINY_LLAMA_PRESET, make_reward_adapter, tree_bytes

    d.mkdir(parents=True)
    policy = d / "policy"
    model = "builtin:tiny-llama"
    subprocess.run(rel.vhtool_argv("init", model, "-o", policy, "--no-fsync", "-q"), check=True)
    adapter = make_reward_adapter(d / "adapter", TINY_LLAMA_PRESET)
    proj = d / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    (proj / "train.py").write_text("print(1)\n")
    (proj / "data.csv").write_text("a,b\n")
    (d / "policy-link").symlink_to(policy)
    commands = {
        "init": ["init", model],
        "make-reference": ["make-reference", str(policy)],
        "attach-reward-adapter": ["attach-reward-adapter", str(policy), str(adapter)],
        "convert": ["convert", str(policy), "--to", "sidecar"],
    }
    # (cwd, OUT, commands it applies to): the project, its ancestors, home and user files for every command;
    # the policy however spelled for the commands that read it; the adapter for attach-reward-adapter.
    every = set(commands)
    readers = {"make-reference", "attach-reward-adapter", "convert"}
    targets = [
        *((proj, out, every) for out in (".", "", "./", str(proj), "../proj", "./../proj", "..", "/", "data.csv")),
        (proj, os.path.expanduser("~"), every),
        (d, "proj", every),
        *((d, out, readers) for out in ("policy", "./policy/", "policy-link", "policy/sub", str(policy))),
        *((policy, out, readers) for out in ("../policy", ".", "../policy-link")),
        (d, str(adapter), {"attach-reward-adapter"}),
        (d, str(adapter / "inside"), {"attach-reward-adapter"}),
    ]
    watched = [proj, policy, adapter]
    before = {str(p): tree_bytes(p) for p in watched}
    tried, failures = 0, []
    for name, argv in commands.items():
        for cwd, out, applies in targets:
            if name not in applies:
                continue
            for force in ([], ["--force"]):
                tried += 1
                res = subprocess.run(
                    rel.vhtool_argv(*argv, "-o", out, *force), cwd=cwd, capture_output=True, text=True
                )
                if res.returncode != 2 or "--force" in res.stderr or res.stderr.count("\n") != 1:
                    failures.append(f"{name} -o {out!r} {force} in {cwd}: exit {res.returncode} {res.stderr.strip()}")
    after = {str(p): tree_bytes(p) for p in watched}
    failures += [f"{p} changed" for p in before if before[p] != after[p]]
    return tried, failures


def _fuzz(d: Path) -> dict[str, Any]:
    from tests import test_fuzz as fz
    from tests.helpers import make_tiny_source
    from vhtool.checkpoint.init_op import HeadSpec, init_checkpoint

    d.mkdir(parents=True)
    src = make_tiny_source(d / "src")
    init_checkpoint(src, d / "single", head=HeadSpec(), source={"model": "x", "kind": "local"}, durable=False)
    init_checkpoint(
        src, d / "sharded", head=HeadSpec(), source={"model": "x", "kind": "local"}, link="hardlink", durable=False
    )
    bases = {"single": d / "single", "sharded": d / "sharded"}
    failures = []
    for fn in (fz.test_fuzz_safetensors_header, fz.test_fuzz_config, fz.test_fuzz_index, fz.test_fuzz_manifest):
        try:
            fn(bases=bases)
        except Exception as exc:  # a falsifying example: report it, keep going
            failures.append(f"{fn.__name__}: {str(exc)[:500]}")
    for name in ("model.safetensors", "config.json", "vhtool.json", "model.safetensors.index.json"):
        for opener in (b"[", b'{"a":'):
            try:
                fz.test_deeply_nested_json_is_a_clean_error(bases, name, opener)
            except AssertionError as exc:
                failures.append(f"nested {name}: {exc}")
    return {**fz.STATS, "scale": fz.SCALE, "failures": len(failures), "failure_details": failures}


def _markdown(f: dict[str, Any], args: argparse.Namespace) -> None:
    fz = f["fuzz"]
    print()
    print("| what | tried | result |")
    print("| --- | --- | --- |")
    print(
        f"| SIGKILL during init / make-reference / attach-reward-adapter | {f['kill_runs']} runs, {f['kills']} killed "
        f"({f['kills_mid_write']} mid-write) | OUT afterwards: absent {f['kill_states']['absent']}, previous OUT "
        f"byte-identical {f['kill_states']['old']}, complete new {f['kill_states']['new']}; "
        f"failures {len(f['kill_failures'])} |"
    )
    print(f"| two runs, one OUT | {f['races']} | failures {len(f['race_failures'])} |")
    print(f"| file-size limit mid-write | {f['write_failures_tried']} | failures {len(f['write_failure_failures'])} |")
    print(f"| full disk (32 MB tmpfs) | 1 | {f['full_disk'].split(':')[0]} |")
    print(f"| hostile sources (init + verify) | {f['hostile_tried']} | failures {len(f['hostile_failures'])} |")
    print(
        f"| destructive -o / --force (cwd, ancestors, home, inputs, user folders) | {f['destructive_tried']} | "
        f"failures {len(f['destructive_failures'])} |"
    )
    print(
        f"| fuzz (verify + inspect-layers) | {fz['examples']} examples, {fz['runs']} runs | exit 0/1/2: "
        f"{fz['exit0']}/{fz['exit1']}/{fz['exit2']}; failures {fz['failures']} |"
    )
    print(f"| **data lost** | | **{f['data_lost_or_contract_broken']}** |")
    print(
        f"\n(`python scripts/reliability_report.py --kills-per-campaign {args.kills_per_campaign} "
        f"--fuzz-scale {args.fuzz_scale} --races {args.races}`, {f['seconds']} s)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
