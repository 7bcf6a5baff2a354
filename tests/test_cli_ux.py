"""The command line's manners: typed choices, help that teaches (with examples that run), completion, quiet
libraries, and honest dry runs. Real commands, through the Typer app or a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TINY_LLAMA_PRESET, make_reward_adapter
from vhtool.builtin import builtin_path

COMMANDS = (
    "init",
    "make-reference",
    "attach-reward-adapter",
    "score",
    "serve",
    "evaluate",
    "inspect-layers",
    "verify",
    "convert",
    "push",
)
VHTOOL = str(Path(sys.executable).with_name("vhtool"))

CHOICE_OPTIONS = (
    ("init", "--v-head-init"),
    ("init", "--link"),
    ("make-reference", "--link"),
    ("attach-reward-adapter", "--link"),
    ("convert", "--to"),
    ("convert", "--head-name"),
    ("score", "--head"),
    ("score", "--join"),
    ("score", "--dtype"),
    ("score", "--device"),
    ("score", "--on-error"),
    ("score", "--format"),
    ("score", "--device-map"),
)


def _choices() -> list[tuple[str, str, tuple[str | None, ...], list[str]]]:
    """(command, option, the core's allowed values, arguments that make the rest of the line valid)."""
    from vhtool.checkpoint.convert import HEAD_NAMES, TARGETS
    from vhtool.checkpoint.copyio import LINK_MODES
    from vhtool.checkpoint.init_op import INIT_STRATEGIES
    from vhtool.models.scoring.options import DEVICE_MAPS, DEVICES, DTYPES, FORMATS, HEADS, JOIN_MODES, ON_ERROR

    missing = ["no-such-model-anywhere"]  # resolving it would fail (exit 2 too): the parser must speak first
    return [
        ("init", "--v-head-init", INIT_STRATEGIES, missing),
        ("init", "--link", LINK_MODES, missing),
        ("make-reference", "--link", LINK_MODES, missing),
        ("attach-reward-adapter", "--link", LINK_MODES, [*missing, "no-such-adapter"]),
        ("convert", "--to", TARGETS, missing),
        ("convert", "--head-name", HEAD_NAMES, [*missing, "--to", "seq-cls"]),
        ("score", "--head", HEADS, missing),
        ("score", "--join", JOIN_MODES, missing),
        ("score", "--dtype", DTYPES, missing),
        ("score", "--device", DEVICES, missing),
        ("score", "--on-error", ON_ERROR, missing),
        ("score", "--format", FORMATS, missing),
        ("score", "--device-map", DEVICE_MAPS, missing),
    ]


def _help(cli: Callable[..., Any], *command: str) -> str:
    res = cli(*command, "--help")
    assert res.exit_code == 0, res.output
    return str(res.stdout)


@pytest.mark.parametrize(("command", "option"), CHOICE_OPTIONS)
def test_choices_are_listed_and_checked_by_the_parser(cli: Callable[..., Any], command: str, option: str) -> None:
    _, _, core_values, rest = next(c for c in _choices() if c[:2] == (command, option))
    allowed = [v for v in core_values if v is not None]
    assert len(_choices()) == len(CHOICE_OPTIONS)
    text = " ".join(_help(cli, command).split())
    assert f"{option} <{'|'.join(allowed)}>" in text
    for value in allowed:
        # a valid choice passes the parser: what fails now is the missing model (exit 2, another message)
        res = cli(command, *rest, option, value)
        assert "is not one of" not in res.stderr, res.stderr
    res = cli(command, *rest, option, "nonsense")
    assert res.exit_code == 2
    assert f"Invalid value for '{option}'" in res.stderr and "'nonsense' is not one of" in res.stderr
    assert all(f"'{v}'" in res.stderr for v in allowed)
    assert "no-such-model-anywhere" not in res.stderr  # refused before the model is looked at


def test_choice_error_with_json_is_one_object(cli: Callable[..., Any], tmp_path: Path) -> None:
    res = subprocess.run(
        [VHTOOL, "init", "x", "--v-head-init", "nonsense", "--json"], capture_output=True, text=True, cwd=tmp_path
    )
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 2 and "random" in doc["error"]["message"] and "normal" in doc["error"]["message"]


def test_the_core_still_validates_choices() -> None:
    from vhtool.checkpoint.copyio import place_file
    from vhtool.checkpoint.init_op import HeadSpec
    from vhtool.errors import InputError

    with pytest.raises(InputError, match="unknown value-head init"):
        HeadSpec(strategy="xavier", initializer_range=0.2, seed=0)
    with pytest.raises(InputError, match="unknown --link mode"):
        place_file(Path("a"), Path("b"), mode="teleport", name="a", want_hash=False)


def test_completion_script(tmp_path: Path) -> None:
    # Typer finds the shell from the process tree (shellingham), which depends on what started pytest; its switch
    # for tests makes --show-completion take the shell's name instead, whatever the parent process is.
    env = {**os.environ, "SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    res = subprocess.run([VHTOOL, "--show-completion", "bash"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "_VHTOOL_COMPLETE" in res.stdout and "complete " in res.stdout
    # the shell asks for the choices of --link and gets the core's
    env.update({"_VHTOOL_COMPLETE": "complete_bash", "COMP_WORDS": "vhtool init m --link h", "COMP_CWORD": "4"})
    res = subprocess.run([VHTOOL], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "hardlink" in res.stdout and "copy" not in res.stdout


@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_help_teaches(cli: Callable[..., Any], command: str) -> None:
    text = _help(cli, *([command] if command else []))
    lines = text.splitlines()
    assert lines[0].startswith("Usage: vhtool")
    purpose = next(line for line in lines[1:] if line.strip())
    assert purpose.strip()[0].isupper()  # a one-line purpose follows the usage
    # no type names where a word should be (<str>, <int range>, <list[str]>, <path>)
    assert not re.search(r"<(str|int|float|path|bool)( range)?>|<list\[", text), command
    # no {model} placeholders in the usage line or the names column (help text may show {layer} patterns)
    names = [lines[0]] + [re.split(r"\S  +", line)[0] for line in lines if re.match(r"^  (-|[A-Z_]+\b)", line)]
    assert not any("{" in name for name in names), names
    assert "Examples:" in text
    assert 2 <= len(_examples(text)) <= 4


def _examples(text: str) -> list[str]:
    after = text.split("Examples:", 1)[1]
    return [line.strip() for line in after.splitlines() if line.strip()]


def test_write_commands_state_the_default_out(cli: Callable[..., Any]) -> None:
    for command, suffix in (
        ("init", "-value-head"),
        ("make-reference", "-reference"),
        ("attach-reward-adapter", "-with-reward"),
        ("convert", "-<target>"),
    ):
        text = " ".join(_help(cli, command).split())
        assert "Default OUT: ./<" in text and f"name>{suffix} in the current directory" in text, command


@pytest.mark.slow
@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_help_examples_run(cli: Callable[..., Any], command: str, tmp_path: Path) -> None:
    examples = _examples(_help(cli, *([command] if command else [])))
    if command == "attach-reward-adapter":  # the one input a user brings: a trained reward LoRA
        make_reward_adapter(tmp_path / "reward-lora", TINY_LLAMA_PRESET)
    env = {**os.environ, "PATH": f"{Path(VHTOOL).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("HF_TOKEN", None)
    for line in examples:
        assert line.startswith(("vhtool ", "printf ", "echo ")), line
        res = subprocess.run(["bash", "-c", line], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert res.returncode == 0, f"{line}\n{res.stdout}\n{res.stderr}"


@pytest.fixture(scope="module")
def policy_with_reward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """builtin:tiny-llama with a value head and a PEFT reward adapter: loading it through PEFT makes transformers
    emit a FutureWarning (`is_gradient_checkpointing` is deprecated) that is no use to a vhtool user."""
    root = tmp_path_factory.mktemp("quiet")
    make_reward_adapter(root / "reward-lora", TINY_LLAMA_PRESET)
    for args in (
        ["init", "builtin:tiny-llama", "-o", "policy", "-q"],
        ["attach-reward-adapter", "policy", "reward-lora", "-q"],
    ):
        subprocess.run([VHTOOL, *args], check=True, cwd=root)
    return root / "policy-with-reward"


@pytest.mark.slow
def test_library_warnings_are_quiet_unless_debug(policy_with_reward: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "VHTOOL_DEBUG")}
    base = [VHTOOL]
    cmd = ["score", str(policy_with_reward), "--text", "Hello there."]
    quiet = subprocess.run([*base, *cmd], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "vhtool score" in quiet.stderr  # the summary table, and nothing from the libraries:
    assert "is_gradient_checkpointing" not in quiet.stderr and "Warning" not in quiet.stderr
    loud = subprocess.run([*base, "--debug", *cmd], capture_output=True, text=True, env=env)
    assert loud.returncode == 0, loud.stderr
    assert "is_gradient_checkpointing" in loud.stderr
    loud = subprocess.run([*base, *cmd], capture_output=True, text=True, env={**env, "VHTOOL_DEBUG": "1"})
    assert "is_gradient_checkpointing" in loud.stderr


def test_missing_value_head_warning_once(recwarn: pytest.WarningsRecorder, capfd: pytest.CaptureFixture[str]) -> None:
    import vhtool

    model = vhtool.AutoModelForCausalLMWithValueHead.from_pretrained("builtin:tiny-gpt2")
    assert model.v_head_loaded is False
    captured = capfd.readouterr()
    shown = [str(w.message) for w in recwarn if "no value-head weights" in str(w.message)]
    assert len(shown) == 1
    assert "no value-head weights" not in captured.err  # not a second time through logging


def test_push_dry_run_offline_is_honest(cli: Callable[..., Any], tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("init", "builtin:tiny-gpt2", "-q").exit_code == 0
    marker = tmp_path / "tiny-gpt2-value-head" / "builtin.json"
    assert not marker.exists()  # init leaves the built-in's marker behind (catalogue.init_copies)
    # a folder copied by hand from a built-in still carries it: push must skip it, and say why
    shutil.copyfile(builtin_path("tiny-gpt2") / "builtin.json", marker)
    res = cli("push", "tiny-gpt2-value-head", "me/tiny", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "remote not checked" in res.stdout and "not checked model.safetensors" in res.stdout
    assert "added" not in res.stdout and "read anonymously" not in res.stderr
    assert "builtin.json" not in res.stdout  # never in the plan (stderr says it is skipped, and why)
    doc = json.loads(cli("push", "tiny-gpt2-value-head", "me/tiny", "--dry-run", "--json").stdout)
    assert {f["status"] for f in doc["files"]} == {"not checked"}
    assert "builtin.json" not in doc["to_upload"] and "builtin.json" in [s["path"] for s in doc["skipped"]]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["init", "builtin:tiny-gpt2"], "tiny-gpt2-value-head"),
        (["make-reference", "policy"], "policy-reference"),
        (["convert", "policy", "--to", "token-cls"], "policy-token-cls"),
        (["make-reference", "builtin:tiny-gpt2"], "tiny-gpt2-reference"),
    ],
)
def test_default_out_in_cwd(
    cli: Callable[..., Any], tmp_path: Path, monkeypatch: Any, argv: list[str], expected: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path)
    assert cli("init", "builtin:tiny-gpt2", "-o", "policy", "-q", "--no-fsync").exit_code == 0
    monkeypatch.chdir(work)
    src = [a if a != "policy" else "../policy" for a in argv]
    res = cli(*src, "--json", "--no-fsync")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["out"] == expected
    assert (work / expected / "vhtool.json").is_file()


def test_default_out_from_inside_the_input_goes_next_to_it(
    cli: Callable[..., Any], tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("init", "builtin:tiny-gpt2", "-o", "policy", "-q", "--no-fsync").exit_code == 0
    monkeypatch.chdir(tmp_path / "policy")
    res = cli("make-reference", "--json", "--no-fsync")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["out"] == "../policy-reference"
    assert (tmp_path / "policy-reference" / "vhtool.json").is_file()
    assert not (tmp_path / "policy" / "policy-reference").exists()
