"""Every command in the README (and the steps of the example CI pipeline) runs as written, offline.

The fenced ``bash`` blocks of README.md run in order in one temporary directory, in a real shell, with
this test's Python environment first on PATH; ``push`` goes to the loopback Hub server. The "Set up"
block is the one exception: it creates a virtual environment and runs this very suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hub_fixtures import HubServer

REPO = Path(__file__).resolve().parents[1]
SETUP_MARKER = "scripts/test.sh"  # the set-up block: installs and runs the suite, so it is not run here
DEV_MARKER = "ruff check"  # the development block: run by .ci/run


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M)


def _shell_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "NO_COLOR": "1"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **(extra or {})}


def _run_block(block: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = block.replace("python examples/", f"python {REPO}/examples/").replace(
        "python scripts/", f"python {REPO}/scripts/"
    )
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_readme_commands_run_as_written(hub_server: HubServer, tmp_path: Path) -> None:
    blocks = bash_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    # Not run here: the set-up block (it runs this very suite) and the development block (lint and type checks
    # read the whole working tree, where any untracked file could fail them: .ci/run runs them on a clean checkout).
    runnable = [b for b in blocks if SETUP_MARKER not in b and DEV_MARKER not in b]
    assert len(blocks) - len(runnable) == 2 and len(runnable) >= 5, blocks
    env = _shell_env({"HF_HUB_OFFLINE": "0"})  # the loopback Hub (its fixture set HF_ENDPOINT and HF_TOKEN)
    for block in runnable:
        res = _run_block(block, tmp_path, env)
        assert res.returncode == 0, f"{block}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
    # What the blocks claim, checked once.
    assert (tmp_path / "tour" / "critic" / "config.json").is_file()
    assert (tmp_path / "ppo" / "policy-with-reward" / "reward_model_adapter" / "adapter_config.json").is_file()
    assert len((tmp_path / "ppo" / "scores.jsonl").read_text().splitlines()) == 2
    assert hub_server.file_bytes("my-org/tiny-ppo-policy", "vhtool.json")


def test_the_example_ci_pipeline_runs(hub_server: HubServer, tmp_path: Path) -> None:
    """The workflow's vhtool steps, with a built-in model and the loopback Hub; every step must exit 0."""
    workflow = yaml.safe_load((REPO / "examples" / "github-actions.yml").read_text(encoding="utf-8"))
    job = workflow["jobs"]["prepare"]
    steps = [s["run"] for s in job["steps"] if "run" in s and "vhtool " in s["run"] and "pip install" not in s["run"]]
    assert len(steps) == 4
    env = _shell_env({**{k: str(v) for k, v in job["env"].items()}, "HF_HUB_OFFLINE": "0"})
    env.update(MODEL="builtin:tiny-llama", REPO="my-org/ci-policy", HF_TOKEN=hub_server.token)
    # the evaluate step: the fresh policy's value head on two pairs (a random head: no accuracy to demand)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"prompt": "Hi.", "chosen": "Hello!", "rejected": "Go."}\n{"chosen": "Yes.", "rejected": ["No.", "?"]}\n'
    )
    env.update(REWARD_MODEL="policy", PAIRS=str(pairs), MIN_ACCURACY="0")
    for step in steps:
        res = _run_block(step, tmp_path, env)
        assert res.returncode == 0, f"{step}\n{res.stderr}"
    import json

    for report in ("init", "reference", "verify", "inspect", "verify-reference", "evaluate", "push"):
        doc = json.loads((tmp_path / f"{report}.json").read_text())
        assert "error" not in doc, (report, doc)
    assert hub_server.file_bytes("my-org/ci-policy", "model.safetensors")


@pytest.mark.parametrize("doc", sorted(p.name for p in (REPO / "docs").glob("*.md")))
def test_docs_links_resolve(doc: str) -> None:
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / "docs" / target).exists(), (doc, target)


def test_readme_links_resolve() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), target
