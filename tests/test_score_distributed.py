"""``vhtool score`` beyond one process: torchrun ranks (gloo, CPU) and accelerate's ``--device-map auto`` offload.

The torchrun tests start real ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m vhtool score``
jobs and compare their output, byte for byte, with a single-process run. On the CPU a value's last bits depend
on the number of intra-op threads (matmul blocking), and torchrun runs each rank with ``OMP_NUM_THREADS=1``: the
single-process baseline here runs with one thread too (the guarantee is "same dtype, same threads per process").
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import json_error
from vhtool.cli.app import app
from vhtool.errors import InputError, OperationError
from vhtool.models.scoring import BadRecordError, InputSpec, ScoreOptions, Scorer, parse_max_memory
from vhtool.models.scoring.distributed import score_dataset_distributed
from vhtool.models.scoring.ranks import (
    DistEnv,
    ProcessGroup,
    RankOutcome,
    choose_backend,
    decide,
    detect_distributed,
    outcome_from_exception,
    raise_verdict,
)

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "hex"]
SMALL_BATCHES = ("--max-batch-tokens", "160")  # several batches per window, so both ranks get some


def _init(src: str, out: Path) -> Path:
    res = CliRunner().invoke(app, ["init", src, "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("score-dist")


@pytest.fixture(scope="module")
def ckpts(work: Path) -> dict[str, Path]:
    """tiny-gpt2 pads on the right, tiny-llama on the left."""
    return {"gpt2": _init("builtin:tiny-gpt2", work / "gpt2"), "llama": _init("builtin:tiny-llama", work / "llama")}


def write_records(path: Path, n: int, *, seed: int = 0, bad: int | None = None) -> Path:
    """``n`` JSONL records of 1..60 words (a mix of lengths); record ``bad`` (0-based) has an id outside the
    vocabulary: well-formed, so only a rank with the model finds it (a broken line is refused before the load)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
        lines.append('{"input_ids": [1, 99999]}' if i == bad else json.dumps({"text": text}))
    path.write_text("".join(line + "\n" for line in lines))
    return path


@contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single(*args: Any) -> Any:
    """A single-process run in this process, with one intra-op thread (as torchrun gives each rank)."""
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, ["score", *map(str, args)])


@dataclass
class Job:
    """One torchrun job, started by the ``jobs`` fixture, and the single-process run it is compared with."""

    src: Path
    out: Path | None
    args: list[str]
    proc: subprocess.Popen[str] | None = None
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    base: Any = None


def start_torchrun(args: list[str], logs: Path, nproc: int = 2) -> subprocess.Popen[str]:
    """``torchrun --standalone --nproc-per-node N -m vhtool score ARGS`` as a real job of N processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "vhtool", "score", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd,
        stdout=open(logs / "stdout", "w"),
        stderr=open(logs / "stderr", "w"),
        text=True,
        env=env,  # noqa: SIM115
    )


@pytest.fixture(scope="module")
def jobs(ckpts: dict[str, Path], work: Path) -> dict[str, Job]:
    """Five torchrun jobs (2 ranks each), started together to share this machine's start-up time.

    count0/count1/count100 write -o FILE (count100 with tiny-llama: left padding, several batches), stdout7
    prints to stdout, bad has a broken record in rank 1's share. While they run, the single-process runs
    they are compared with run here.
    """
    plan = {
        "count0": ("gpt2", 0, None, True),
        "count1": ("gpt2", 1, None, True),
        "count100": ("llama", 100, None, True),
        "stdout7": ("gpt2", 7, None, False),
        "bad": ("gpt2", 7, 3, True),  # index 3: 3 mod 2 = rank 1's share; line 4
    }
    out: dict[str, Job] = {}
    for name, (arch, count, bad, to_file) in plan.items():
        d = work / name
        d.mkdir()
        logs = work / f"{name}-logs"
        logs.mkdir()
        src = write_records(d / "in.jsonl", count, seed=count, bad=bad)
        target = d / "ranks.jsonl" if to_file else None
        args = [str(ckpts[arch]), "-i", str(src), *SMALL_BATCHES]
        job = Job(src, target, args)
        extra = ["-o", str(target), "--json"] if target is not None else ["-q"]
        job.proc = start_torchrun([*args, *extra], logs)
        out[name] = job
    for name, job in out.items():
        if name not in ("bad", "count0"):  # the single-process baseline, beside the job's directory (not in it)
            one = work / f"{name}-single.jsonl"
            extra = ["-o", str(one), "--json"] if job.out is not None else ["-q"]
            job.base = single(*job.args, *extra)
            assert job.base.exit_code == 0, job.base.stderr
    for name, job in out.items():
        assert job.proc is not None
        job.returncode = job.proc.wait(timeout=300)
        job.stdout = (work / f"{name}-logs" / "stdout").read_text()
        job.stderr = (work / f"{name}-logs" / "stderr").read_text()
    return out


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# ---------------------------------------------------------------------------------------------- torchrun, gloo
def test_torchrun_empty_input_is_refused_before_the_load(jobs: dict[str, Job]) -> None:
    job = jobs["count0"]
    assert job.returncode == 1  # torchrun's own code for a failed job; each rank exited 2
    assert job.stderr.count("exitcode  : 2") >= 1 and "exitcode  : 1" not in job.stderr, job.stderr
    errors = [line for line in job.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: {job.src}: no records to score (the input is empty); nothing was written."], errors
    assert job.out is not None and not job.out.exists()


@pytest.mark.parametrize(("name", "count"), [("count1", 1), ("count100", 100)])
def test_torchrun_output_file_is_byte_identical(name: str, count: int, jobs: dict[str, Job], work: Path) -> None:
    job = jobs[name]
    assert job.returncode == 0, job.stderr
    assert job.out is not None
    one = work / f"{name}-single.jsonl"
    assert job.out.read_bytes() == one.read_bytes()
    assert len(job.out.read_text().splitlines()) == count
    # Rank 1 prints nothing on stdout: it holds exactly rank 0's one JSON object.
    summary = json.loads(job.stdout)["summary"]
    base = json.loads(job.base.stdout)["summary"]
    assert summary["ranks"] == 2 and base["ranks"] == 1
    same = ("count", "mean", "std", "min", "max", "tokens", "padded_tokens", "batches", "padding_side")
    assert {k: summary[k] for k in same} == {k: base[k] for k in same}
    if count == 100:  # tiny-llama pads on the left; the budget makes several batches, shared by both ranks
        assert summary["batches"] >= 4 and summary["padding_side"] == "left"
    assert leftovers(job.out.parent, {"in.jsonl", "ranks.jsonl"}) == []


def test_torchrun_stdout_is_byte_identical(jobs: dict[str, Job]) -> None:
    job = jobs["stdout7"]
    assert job.returncode == 0, job.stderr
    assert len(job.base.stdout.splitlines()) == 7
    assert job.stdout == job.base.stdout
    assert [json.loads(line)["index"] for line in job.stdout.splitlines()] == list(range(7))


def test_torchrun_bad_record_in_rank_1_share_fails_cleanly(jobs: dict[str, Job]) -> None:
    job = jobs["bad"]
    assert job.returncode == 1  # torchrun's own code for a failed job; it lists each rank's exit code, 2:
    assert job.stderr.count("exitcode  : 2") >= 1 and "exitcode  : 1" not in job.stderr, job.stderr
    errors = [line for line in job.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, job.stderr  # rank 0 speaks for the job; rank 1 is silent
    assert errors[0].startswith(f"Error: rank 1 of 2: {job.src}: line 4: input_ids has id 99999"), errors
    assert json_error(job.stdout, 2)["message"].startswith("rank 1 of 2: ")  # --json: one object, from rank 0
    assert job.out is not None and not job.out.exists() and leftovers(job.src.parent, {"in.jsonl"}) == []


def test_refused_before_joining_a_job(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """Inputs no rank can share, and --device-map in every rank, are refused before any process group exists."""
    import io

    env = DistEnv(rank=1, world_size=2, local_rank=1, master_addr="127.0.0.1", master_port="1")
    with pytest.raises(InputError, match="stdin.*cannot be shared"):
        score_dataset_distributed(
            ckpts["gpt2"], env=env, inputs=InputSpec(stream=io.StringIO("a\n")), options=ScoreOptions()
        )
    with pytest.raises(InputError, match="--device-map auto spreads one model.*each of 2 ranks"):
        score_dataset_distributed(
            ckpts["gpt2"], env=env, inputs=InputSpec(texts=("a",)), options=ScoreOptions(device_map="auto")
        )
    with pytest.raises(InputError, match="--dist-timeout must be positive"):
        ProcessGroup(env, device="cpu", timeout_s=0)
    import torch.distributed as dist

    assert not dist.is_initialized()


# ---------------------------------------------------------------------------------------------- the pieces
def test_detect_distributed_from_launcher_variables() -> None:
    base = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert detect_distributed({}) is None
    assert detect_distributed({**base, "WORLD_SIZE": "1", "RANK": "0"}) is None
    env = detect_distributed({**base, "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert env == DistEnv(3, 4, 1, "10.0.0.1", "29500") and env.to_json()["world_size"] == 4
    for bad, message in (
        ({**base, "WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not a number"),
        ({**base, "WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 .* does not fit WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR and MASTER_PORT not set"),
    ):
        with pytest.raises(InputError, match=message):
            detect_distributed(bad)


def test_backend_is_nccl_on_cuda_gloo_on_cpu() -> None:
    assert choose_backend("auto", cuda_available=True) == "nccl"
    assert choose_backend("cuda", cuda_available=True) == "nccl"
    assert choose_backend("cpu", cuda_available=True) == "gloo"
    assert choose_backend("auto", cuda_available=False) == "gloo"
    assert choose_backend("auto", cuda_available=torch.cuda.is_available()) == (
        "nccl" if torch.cuda.is_available() else "gloo"
    )


def test_verdicts_name_the_rank_and_agree_on_one_code() -> None:
    ok = RankOutcome(0, "ok", payload={0: (1.0, None)})
    assert decide([ok, RankOutcome(1, "ok")], 2).state == "ok"
    assert decide([RankOutcome(0, "done"), RankOutcome(1, "done")], 2).state == "done"
    mixed = decide([RankOutcome(0, "done"), RankOutcome(1, "ok")], 2)
    assert mixed.state == "fail" and mixed.code == 1 and "different inputs" in mixed.message
    # A bad record (every rank finds it) is reported once, as the share of rank index mod world.
    bad = outcome_from_exception(BadRecordError("x.jsonl: line 6: empty text.", index=5, line=6), rank=0)
    assert (bad.code, bad.record_index, bad.line) == (2, 5, 6)
    v = decide([bad, RankOutcome(1, "fail", 2, bad.message, 5, 6), RankOutcome(2, "ok")], 3)
    assert (v.state, v.code, v.message) == ("fail", 2, "rank 2 of 3: x.jsonl: line 6: empty text.")
    # A failure of one rank (out of memory while scoring its batches) names it; the others stop with its code.
    oom = outcome_from_exception(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore"), rank=1)
    assert oom.code == 1 and oom.message == "out of memory (CUDA out of memory. Tried to allocate 2 GiB)"
    v = decide([RankOutcome(0, "ok"), oom, outcome_from_exception(KeyError("k"), rank=2)], 3)
    assert v.code == 1 and v.message == f"rank 1 of 3: {oom.message} (rank 2 failed too)"
    # The same failure on every rank (a missing checkpoint) is said once, with its own code.
    same = [outcome_from_exception(InputError("nope: no such checkpoint."), rank=r) for r in range(2)]
    assert decide(same, 2) == decide(same[:1], 1)
    assert decide(same, 2).message == "nope: no such checkpoint." and decide(same, 2).code == 2
    with pytest.raises(InputError, match="rank 2 of 3"):
        raise_verdict(decide([bad, RankOutcome(1, "ok"), RankOutcome(2, "ok")], 3))
    with pytest.raises(OperationError, match="rank 1 of 3"):
        raise_verdict(v)


# ---------------------------------------------------------------------------------------------- --device-map auto
def _scores(path: Path) -> list[float]:
    return [json.loads(line)["score"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("arch", "cap"), [("gpt2", "500KB"), ("llama", "500KB")])
def test_device_map_offload_gives_the_plain_scores(
    arch: str, cap: str, ckpts: dict[str, Path], tmp_path: Path
) -> None:
    src = write_records(tmp_path / "in.jsonl", 12, seed=3)
    offload = tmp_path / "offload"
    scorer = Scorer(
        ckpts[arch],
        options=ScoreOptions(device_map="auto", max_memory=f"cpu={cap}", offload_folder=str(offload)),
    )
    device_map = scorer.model.pretrained_model.hf_device_map
    # The cap forced layers onto the disk (read back from the checkpoint's safetensors as they are needed).
    assert "disk" in device_map.values() and "cpu" in device_map.values()
    assert scorer.model.v_head.summary.weight.device == torch.device("cpu")  # not `meta`, where offloaded weights sit
    assert scorer.forward_kind == "backbone" and any("--device-map auto" in n for n in scorer.notes)

    plain, mapped = tmp_path / "plain.jsonl", tmp_path / "mapped.jsonl"
    res = single(ckpts[arch], "-i", src, "-o", plain, "-q")
    assert res.exit_code == 0, res.stderr
    res = single(
        ckpts[arch], "-i", src, "-o", mapped, "--json", "--device-map", "auto", "--max-memory", f"cpu={cap}",
        "--offload-folder", tmp_path / "offload2",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["summary"]["device"] == "cpu"
    assert _scores(mapped) == pytest.approx(_scores(plain), abs=1e-5)


@pytest.fixture(scope="module")
def rewarded(ckpts: dict[str, Path], work: Path) -> Path:
    """tiny-llama with a LoRA reward adapter attached (non-zero random LoRA B and score head)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from vhtool.builtin import builtin_path

    torch.manual_seed(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq_cls = AutoModelForSequenceClassification.from_pretrained(builtin_path("builtin:tiny-llama"), num_labels=1)
    peft_model = get_peft_model(
        seq_cls, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or ".score." in name:
                p.normal_(0.0, 0.5)
    peft_model.save_pretrained(work / "llama-rm")
    res = CliRunner().invoke(
        app, ["attach-reward-adapter", str(ckpts["llama"]), str(work / "llama-rm"), "-o", str(work / "llama-rw")]
    )
    assert res.exit_code == 0, res.stderr
    return work / "llama-rw"


def test_device_map_reward_head(rewarded: Path, tmp_path: Path) -> None:
    """No offload: the reward scores equal the plain load's. Offloaded adapter layers: refused, never garbage."""
    src = write_records(tmp_path / "in.jsonl", 9, seed=5)
    plain, mapped = tmp_path / "plain.jsonl", tmp_path / "mapped.jsonl"
    assert single(rewarded, "-i", src, "-o", plain, "-q").exit_code == 0
    res = single(rewarded, "-i", src, "-o", mapped, "--device-map", "auto", "--max-memory", '{"cpu": "50MB"}', "-q")
    assert res.exit_code == 0, res.stderr
    assert _scores(mapped) == pytest.approx(_scores(plain), abs=1e-5)
    res = single(
        rewarded, "-i", src, "-o", tmp_path / "x.jsonl", "--device-map", "auto", "--max-memory", "cpu=500KB",
        "--offload-folder", tmp_path / "off",
    )  # fmt: skip
    assert res.exit_code == 2 and "PEFT cannot load adapter weights into offloaded layers" in res.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_device_map_option_errors(ckpts: dict[str, Path], tmp_path: Path) -> None:
    g = ckpts["gpt2"]
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    cases = [
        (("--max-memory", "cpu=1GB"), "--max-memory applies to big-model loading only; add --device-map auto"),
        (("--offload-folder", tmp_path), "--offload-folder applies to big-model loading only"),
        (
            ("--device-map", "everywhere"),
            "'everywhere' is not a choice for --device-map; choose one of 'auto', 'balanced'",
        ),
        (("--device-map", "auto", "--max-memory", "cpu"), "'cpu' is not DEVICE=SIZE"),
        (("--device-map", "auto", "--max-memory", "gpu7=1GB"), "unknown device 'gpu7'"),
        (("--device-map", "auto", "--max-memory", "cpu=lots"), "'lots' is not a size"),
        (("--device-map", "auto", "--max-memory", "{cpu: 1}"), "not valid JSON"),
        (("--device-map", "auto", "--max-memory", "cpu=1KB", "--offload-folder", afile), f"{afile}: File exists"),
    ]
    if not torch.cuda.is_available():
        cases.append((("--device-map", "auto", "--max-memory", "0=1GB"), "Cannot access accelerator device"))
    for args, message in cases:
        res = single(g, "--text", "a fox", *args)
        assert res.exit_code == 2, (args, res.stderr)
        assert message in res.stderr, (args, res.stderr)
    assert parse_max_memory("cpu=200MB, 0=20GiB,cuda:1=1000") == {"cpu": 200_000_000, 0: 20 * 2**30, 1: 1000}
    assert parse_max_memory('{"cpu": "1KiB", "0": 5}') == {"cpu": 1024, 0: 5}


def test_heads_go_where_the_last_block_output_is() -> None:
    """The head device read from accelerate's map: the last mapped module in module order (LM head left out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from vhtool.models.hidden import mapped_output_device

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=50, n_positions=16))
    assert mapped_output_device(model) is None  # no device map: the caller keeps its own placement
    cases = [
        # two GPUs, the map in accelerate's (not the module) order, the LM head tied back to GPU 0
        (
            {"transformer.wte": 0, "lm_head": 0, "transformer.ln_f": 1, "transformer.h.0": 0, "transformer.h.1": 1},
            "cuda:1",
        ),
        # offloaded tail: it executes on the main device, the first accelerator of the map
        ({"transformer.wte": 0, "lm_head": 0, "transformer.h": "cpu", "transformer.ln_f": "disk"}, "cuda:0"),
        # no accelerator at all (this machine's case): the CPU, never `meta`
        ({"transformer.wte": "cpu", "lm_head": "cpu", "transformer.ln_f": "disk", "transformer.h": "disk"}, "cpu"),
        ({"": "disk"}, "cpu"),
    ]
    for device_map, expected in cases:
        model.hf_device_map = device_map
        assert mapped_output_device(model) == torch.device(expected), device_map


def test_a_job_of_one_rank_in_process(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The distributed path end to end in a real (gloo) group of one: same bytes, and its failures leave nothing."""
    import socket

    import torch.distributed as dist

    from vhtool.models.scoring import score_dataset

    with socket.socket() as s:  # a free port for the env:// rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    env = DistEnv(0, 1, 0, "127.0.0.1", port)
    src = write_records(tmp_path / "in.jsonl", 30, seed=2)
    options = ScoreOptions(max_batch_tokens=200)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    base = score_dataset(ckpts["gpt2"], inputs=InputSpec(path=src), options=options, output=one)
    got = score_dataset_distributed(ckpts["gpt2"], env=env, inputs=InputSpec(path=src), options=options, output=two)
    assert not dist.is_initialized()  # the group it joined is left again
    assert got is not None and got.ranks == 1 and got.output == str(two) and got.batches == base.batches > 2
    assert two.read_bytes() == one.read_bytes()
    with pytest.raises(InputError, match="two.jsonl exists; pass --force") as caught:
        score_dataset_distributed(ckpts["gpt2"], env=env, inputs=InputSpec(path=src), options=options, output=two)
    assert not str(caught.value).startswith("rank")  # what every rank reports alike is said once, unnamed
    bad = write_records(tmp_path / "bad.jsonl", 30, seed=2, bad=17)
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError, match=f"^rank 0 of 1: {bad}: line 18: input_ids has id 99999"):
        score_dataset_distributed(ckpts["gpt2"], env=env, inputs=InputSpec(path=bad), options=options, output=out)
    assert not out.exists() and leftovers(tmp_path, {"in.jsonl", "bad.jsonl", "one.jsonl", "two.jsonl"}) == []
    assert not dist.is_initialized()
