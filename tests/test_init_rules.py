"""What ``init`` copies, what ``--force`` may replace, and that ``--force`` never re-initialises a head.

Issue 20, points 5 and 6: ``init`` copied every top-level file of its source (``LICENSE.txt``, ``train.py``) and
the ``--force`` rule then refused vhtool's own output; ``init SRC -o OUT --force`` also replaced a value head SRC
already had. Both now follow the one catalogue of files (:mod:`vhtool.checkpoint.catalogue`) and an explicit
``--reinit-head``. Every case runs real commands.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from tests.helpers import TINY_LLAMA_PRESET, make_reward_adapter, tree_bytes
from vhtool.builtin import builtin_path

VHTOOL = str(Path(sys.executable).with_name("vhtool"))
#: Files a model repo carries beside the model that travel with it.
TRAVELLING = {"LICENSE.txt": "MIT\n", "preprocessor_config.json": '{"do_resize": false}\n'}
#: Files of the user's (or of training) that vhtool never copies: unknown, hidden, pickled training state.
STAYING = {"train.py": "print(1)\n", ".gitattributes": "*.safetensors lfs\n", "training_args.bin": "pickle"}


def _model_repo(where: Path, builtin: str = "tiny-gpt2") -> Path:
    """A built-in's files plus a model repo's extras and a user's files, as a local source folder."""
    shutil.copytree(builtin_path(builtin), where)
    for name, text in {**TRAVELLING, **STAYING}.items():
        (where / name).write_text(text)
    return where


def _head(out: Path) -> bytes:
    with safe_open(str(out / "model.safetensors"), "np") as fh:
        return bytes(fh.get_tensor("v_head.summary.weight").tobytes())


def _suggested(message: str) -> list[list[str]]:
    """Every `vhtool ...` command quoted in backticks in ``message``, split as a shell would."""
    return [shlex.split(m)[1:] for m in re.findall(r"`(vhtool [^`]+)`", " ".join(message.split()))]


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------- point 6: what init copies, --force


def test_init_copies_what_the_catalogue_allows_and_force_accepts_its_own_output(tmp_path: Path) -> None:
    """The console script: LICENSE.txt and preprocessor_config.json travel, train.py does not; --force works."""
    src = _model_repo(tmp_path / "src")
    before = tree_bytes(src)
    out = tmp_path / "out"
    res = subprocess.run([VHTOOL, "init", str(src), "-o", str(out), "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name, text in TRAVELLING.items():
        assert (out / name).read_text() == text, name
    for name in STAYING:
        assert not (out / name).exists(), name
    res = subprocess.run([VHTOOL, "init", str(src), "-o", str(out), "--force", "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr  # before: "holds 'LICENSE.txt', which is not a checkpoint file"
    assert (out / "LICENSE.txt").read_text() == TRAVELLING["LICENSE.txt"] and not (out / "train.py").exists()
    assert tree_bytes(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary or lock file left


def test_remote_code_modules_travel_with_the_model(cli: Callable[..., Any], tmp_path: Path) -> None:
    """A remote-code model's modules (config.json's auto_map) are part of it; init must not strand them."""
    src = _model_repo(tmp_path / "src")
    (src / "modeling_tiny.py").write_text("# the model's code\n")
    (src / "configuration_tiny.py").write_text("# its config class\n")
    assert cli("init", src, "-o", tmp_path / "out", "-q").exit_code == 0
    assert (tmp_path / "out" / "modeling_tiny.py").is_file() and (tmp_path / "out" / "configuration_tiny.py").is_file()
    assert not (tmp_path / "out" / "train.py").exists()
    assert cli("init", src, "-o", tmp_path / "out", "--force", "-q").exit_code == 0


@pytest.mark.parametrize("command", ["make-reference", "convert", "attach-reward-adapter"])
def test_every_builder_output_is_replaceable_by_force(cli: Callable[..., Any], tmp_path: Path, command: str) -> None:
    """Whatever a command copies from its inputs, the same command with --force may replace it afterwards."""
    src = _model_repo(tmp_path / "src", "tiny-llama")
    policy = tmp_path / "policy"
    assert cli("init", src, "-o", policy, "-q").exit_code == 0
    (policy / "notes.txt").write_text("the user's notes in the policy folder\n")  # unknown: never copied
    adapter = make_reward_adapter(tmp_path / "adapter", TINY_LLAMA_PRESET)
    for name, text in STAYING.items():  # a trainer's output folder: a script, a pickle of training state
        (adapter / name).write_text(text)
    args = {
        "make-reference": ["make-reference", str(policy), "--shared-layers", "1"],
        "convert": ["convert", str(policy), "--to", "sidecar"],
        "attach-reward-adapter": ["attach-reward-adapter", str(policy), str(adapter)],
    }[command]
    out = tmp_path / "out"
    assert cli(*args, "-o", out, "-q").exit_code == 0
    names = {p.name for p in out.rglob("*")}
    assert "LICENSE.txt" in names and not {"notes.txt", "train.py", "training_args.bin"} & names
    res = cli(*args, "-o", out, "--force", "-q")
    assert res.exit_code == 0, res.stderr


def test_an_empty_output_folder_is_called_empty(cli: Callable[..., Any], tmp_path: Path) -> None:
    """Issue 21: `mkdir out && vhtool init … -o out` must not say the empty folder holds checkpoint files."""
    out = tmp_path / "out"
    out.mkdir()
    res = cli("init", "builtin:tiny-gpt2", "-o", out)
    assert res.exit_code == 2
    line = _one_error_line(res.stderr)
    assert "it is empty" in line and "checkpoint files only" not in line and "--force" in line
    assert list(out.iterdir()) == []
    assert cli("init", "builtin:tiny-gpt2", "-o", out, "--force", "-q").exit_code == 0
    (tmp_path / "prev").mkdir()
    assert cli("init", "builtin:tiny-gpt2", "-o", tmp_path / "prev", "--force", "-q").exit_code == 0
    res = cli("init", "builtin:tiny-gpt2", "-o", tmp_path / "prev")  # a previous output: says so
    assert res.exit_code == 2 and "checkpoint files only" in _one_error_line(res.stderr)


# --------------------------------------------------------------- point 5: --force never re-initialises a head


@pytest.fixture
def policy(cli: Callable[..., Any], tmp_path: Path) -> Path:
    """A vhtool policy whose head stands for a trained one."""
    out = tmp_path / "policy"
    assert cli("init", "builtin:tiny-gpt2", "-o", out, "--v-head-init", "normal", "--seed", "7", "-q").exit_code == 0
    return out


def test_force_alone_refuses_a_source_with_a_head(cli: Callable[..., Any], tmp_path: Path, policy: Path) -> None:
    before = tree_bytes(policy)
    res = cli("init", policy, "-o", tmp_path / "fresh", "--force")
    assert res.exit_code == 2
    line = _one_error_line(res.stderr)
    assert "already has a value head" in line and "--reinit-head" in line and "--force only replaces" in line
    assert not (tmp_path / "fresh").exists() and tree_bytes(policy) == before
    (command,) = _suggested(line)  # the suggestion works as written
    assert "--reinit-head" in command
    res = cli(*command, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["reinitialised"] is True and any("--reinit-head" in n for n in doc["notes"])
    assert _head(tmp_path / "fresh") != _head(policy) and tree_bytes(policy) == before


def test_force_over_a_previous_output_keeps_it_and_names_both_flags(
    cli: Callable[..., Any], tmp_path: Path, policy: Path
) -> None:
    """`init POLICY -o OUT --force` with OUT a previous output: refused, OUT untouched; the suggestion replaces it."""
    out = tmp_path / "out"
    assert cli("init", "builtin:tiny-gpt2", "-o", out, "-q").exit_code == 0
    before = tree_bytes(out)
    res = cli("init", policy, "-o", out, "--force")
    assert res.exit_code == 2
    (command,) = _suggested(_one_error_line(res.stderr))
    assert tree_bytes(out) == before
    assert "--reinit-head" in command and "--force" in command  # OUT exists: replacing it needs --force
    assert cli(*command, "-q").exit_code == 0
    assert tree_bytes(out) != before and _head(out) != _head(policy)


def test_json_refusal_names_the_flag(cli: Callable[..., Any], tmp_path: Path, policy: Path) -> None:
    res = cli("init", policy, "-o", tmp_path / "fresh", "--force", "--json")
    assert res.exit_code == 2
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 2 and "--reinit-head" in doc["error"]["message"]
    assert not (tmp_path / "fresh").exists()


def test_reinit_head_on_a_source_without_a_head_is_a_plain_init(cli: Callable[..., Any], tmp_path: Path) -> None:
    res = cli("init", "builtin:tiny-gpt2", "-o", tmp_path / "out", "--reinit-head", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["reinitialised"] is False
