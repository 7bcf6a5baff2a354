"""Train with TRL 1.12.0's PPOTrainer on checkpoints made only by vhtool commands, then export and publish.

    python examples/ppo_loop.py WORKDIR [--push REPO_ID]

Runs offline on the CPU in about 15 s on ``builtin:tiny-llama`` (see ``docs/ppo.md``):

1. ``vhtool init`` a policy (default ``--v-head-init random``), ``vhtool make-reference`` its reference,
   ``vhtool convert --to seq-cls`` its value model (the untrained random bias is dropped, and recorded), and a
   reward model from a second init (``--seed 1``) converted the same way;
2. checks that PPO's initial values equal ``vhtool score policy --head value`` (less the dropped bias);
3. trains 2 PPO steps;
4. exports the trained policy as a value-head checkpoint (``save_pretrained``, no ``vhtool.json``), whose head is
   the trained critic's ``score`` row with a zero bias, and runs ``vhtool verify`` on it;
5. with ``--push``: ``vhtool push`` (token and ``HF_ENDPOINT`` from the environment).

The functions are what ``tests/test_ppo_loop.py`` runs, so this file cannot drift from the test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PROMPTS = ["The cat sat on", "Hello, my name is", "Once upon a time", "The weather today"]
BASE = "builtin:tiny-llama"


def vhtool(*args: str | Path, cwd: Path) -> str:
    """Runs one ``vhtool`` command (as a user would, in a subprocess) and returns its stdout."""
    cmd = [sys.executable, "-m", "vhtool", *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def make_checkpoints(work: Path) -> None:
    """policy, reference, value-model, rm-src and reward-model under ``work``, made by vhtool commands only."""
    work.mkdir(parents=True, exist_ok=True)
    vhtool("init", BASE, "-o", "policy", "-q", cwd=work)
    vhtool("make-reference", "policy", "-o", "reference", "-q", cwd=work)
    vhtool("convert", "policy", "--to", "seq-cls", "-o", "value-model", "-q", cwd=work)
    vhtool("init", BASE, "--seed", "1", "-o", "rm-src", "-q", cwd=work)
    vhtool("convert", "rm-src", "--to", "seq-cls", "-o", "reward-model", "-q", cwd=work)


def dropped_bias(checkpoint: Path) -> float:
    """The untrained random bias ``convert --to seq-cls`` dropped, read back from its ``vhtool.json``."""
    doc = json.loads((checkpoint / "vhtool.json").read_text(encoding="utf-8"))
    dropped = doc["conversion"].get("dropped_untrained") or []
    return float(dropped[0].split("(value ")[1].rstrip(")")) if dropped else 0.0


def initial_values(work: Path) -> tuple[list[float], list[float]]:
    """PPO's value of each prompt before training, and ``vhtool score policy --head value`` minus the dropped bias."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.utils import get_reward

    tok = AutoTokenizer.from_pretrained(work / "policy", padding_side="left")
    value_model = AutoModelForSequenceClassification.from_pretrained(work / "value-model").eval()
    ids = tok(PROMPTS, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        # PPOTrainer's value of a prompt: the critic at its last token. With left padding that is the last
        # column; get_reward reads at the token before the first pad after ``context_length``, so L - 1.
        _, values, _ = get_reward(value_model, ids, tok.pad_token_id, ids.shape[1] - 1)
    trl_values = [float(v) for v in values.reshape(-1)]

    args: list[str | Path] = ["score", "policy", "--head", "value", "-o", "scores.jsonl", "-q"]
    for p in PROMPTS:
        args += ["--text", p]
    vhtool(*args, cwd=work)
    records = [json.loads(line) for line in (work / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    bias = dropped_bias(work / "value-model")
    return trl_values, [r["score"] - bias for r in sorted(records, key=lambda r: r["index"])]


def train(work: Path) -> Any:
    """Two PPO steps on the CPU with TRL 1.12.0's PPOTrainer; returns the trainer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(work / "policy", padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(work / "policy")  # the v_head.* tensors are ignored here
    ref = AutoModelForCausalLM.from_pretrained(work / "reference")
    value = AutoModelForSequenceClassification.from_pretrained(work / "value-model")
    reward = AutoModelForSequenceClassification.from_pretrained(work / "reward-model")
    ds = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in PROMPTS]})
    cfg = PPOConfig(
        output_dir=str(work / "ppo-out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        total_episodes=4,
        num_ppo_epochs=1,
        num_mini_batches=1,
        response_length=6,
        local_rollout_forward_batch_size=2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        num_sample_generations=0,
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = PPOTrainer(
            args=cfg,
            processing_class=tok,
            model=policy,
            ref_model=ref,
            reward_model=reward,
            value_model=value,
            train_dataset=ds,
        )
        trainer.train()
    return trainer


def export_policy(trainer: Any, out: Path) -> Any:
    """The trained policy as a value-head checkpoint: its LM plus the trained critic's head, saved to ``out``.

    TRL's PPOTrainer trains the critic as a separate model (its own backbone and a ``score`` row without a
    bias); a value-head checkpoint has one backbone. The export keeps the trained policy exactly and takes
    the critic's trained ``score`` row as the value head with a zero bias (the critic never had one, so zero
    is what it learned): a warm start for the next stage, not the critic itself, whose values came from its
    own backbone. To keep the exact critic, publish ``value-model`` as it is (a seq-cls checkpoint).
    """
    import torch

    import vhtool

    model = vhtool.AutoModelForCausalLMWithValueHead(trainer.model.policy)
    score = trainer.model.value_model.score.weight.detach()
    with torch.no_grad():
        model.v_head.summary.weight.copy_(score.to(model.v_head.summary.weight.dtype))
        model.v_head.summary.bias.zero_()
    model.save_pretrained(out)
    trainer.processing_class.save_pretrained(out)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--push", metavar="REPO_ID", help="publish the trained policy with `vhtool push`")
    args = parser.parse_args(argv)
    work: Path = args.workdir.resolve()
    make_checkpoints(work)
    trl_values, scored = initial_values(work)
    worst = max(abs(a - b) for a, b in zip(trl_values, scored, strict=True))
    print(f"initial values: PPO {trl_values}, vhtool score {scored} (max difference {worst:.2e})")
    if worst > 1e-5:
        return 1
    trainer = train(work)
    export_policy(trainer, work / "trained")
    print(vhtool("verify", "trained", cwd=work), end="")
    if args.push:
        print(vhtool("push", "trained", args.push, cwd=work), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
