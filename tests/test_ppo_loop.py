"""The RLHF loop end to end: vhtool-made checkpoints -> TRL 1.12.0's PPOTrainer -> export -> verify -> push -> reload.

Runs ``examples/ppo_loop.py``'s functions (the script ``docs/ppo.md`` shows), so the recipe cannot rot.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.hub_fixtures import HubServer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ppo_loop.py"
REPO = "user/trained-policy"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ppo_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ppo_loop_end_to_end(tmp_path: Path, cli: Callable[..., Any], hub_server: HubServer) -> None:
    import torch

    import vhtool

    ex = _example()
    work = tmp_path / "loop"
    ex.make_checkpoints(work)
    for name in ("policy", "reference", "value-model", "reward-model"):
        assert cli("verify", work / name, "-q").exit_code == 0, name
    manifest = json.loads((work / "value-model" / "vhtool.json").read_text())
    assert manifest["role"] == "critic" and manifest["conversion"]["dropped_untrained"]

    # PPO's initial values are vhtool's value head (less the untrained bias the seq-cls critic cannot hold)
    trl_values, scored = ex.initial_values(work)
    assert len(trl_values) == len(ex.PROMPTS)
    assert max(abs(a - b) for a, b in zip(trl_values, scored, strict=True)) <= 1e-5

    trainer = ex.train(work)
    trained = work / "trained"
    model = ex.export_policy(trainer, trained)
    assert not (trained / "vhtool.json").exists()
    res = cli("verify", trained, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["manifest"] is False and any("not checked" in n for n in doc["notes"])

    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    res = cli("push", trained, REPO, "--json")
    assert res.exit_code == 0, res.stderr
    assert "vhtool.json" in json.loads(res.stdout)["uploaded"]
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before  # nothing written into the folder
    pushed = json.loads(hub_server.file_bytes(REPO, "vhtool.json"))
    assert pushed["adopted"]["kind"] == "save_pretrained" and pushed["role"] == "policy"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlValueHead

        ours = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained(REPO)
        theirs = TrlValueHead.from_pretrained(REPO)
    critic = trainer.model.value_model.score.weight.detach()
    for loaded in (ours, theirs):
        assert torch.equal(loaded.v_head.summary.weight.detach(), model.v_head.summary.weight.detach())
        assert torch.equal(loaded.v_head.summary.weight.detach(), critic)
        assert torch.equal(loaded.v_head.summary.bias.detach(), torch.zeros(1))
