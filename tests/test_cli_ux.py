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
        assert "is not a choice" not in res.stderr, res.stderr
    res = cli(command, *rest, option, "nonsense")
    assert res.exit_code == 2
    assert res.stderr.startswith(f"Error: 'nonsense' is not a choice for {option}; choose one of ")
    assert all(f"'{v}'" in res.stderr for v in allowed)
    assert len(res.stderr.splitlines()) == 1 and "Value error" not in res.stderr
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
    """The example command lines of a help text; a line ending in ``\\`` continues on the next."""
    after = text.split("Examples:", 1)[1]
    lines: list[str] = []
    pending = ""
    for line in (line.strip() for line in after.splitlines() if line.strip()):
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        lines.append(pending + line)
        pending = ""
    return lines


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
    assert quiet.stderr == ""  # nothing from the libraries (and the summary table is for a terminal only)
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


# ------------------------------------------------------------------------------------------- issue 21: manners
WRAP = (
    "import atexit, sys; atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr)); "
    "from vhtool.cli.app import main; sys.argv[0] = 'vhtool'; main()"
)


def _vhtool(*args: Any, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``vhtool ARGS`` in a subprocess that says at exit whether torch was imported (the last stderr line)."""
    return subprocess.run(
        [sys.executable, "-c", WRAP, *[str(a) for a in args]],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


@pytest.fixture(scope="module")
def small_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ux21")
    subprocess.run([VHTOOL, "init", "builtin:tiny-gpt2", "-o", "policy", "-q", "--no-fsync"], check=True, cwd=root)
    return root / "policy"


@pytest.mark.parametrize(
    ("command", "lines", "args", "message"),
    [
        ("score", '{"text": "a"}\n{not json\n', [], "in.jsonl: line 2: invalid JSON"),
        ("score", '{"title": "a"}\n', [], "in.jsonl: line 1: no text, prompt + completion, or input_ids field"),
        ("score", '{"prompt": "a"}\n', [], "line 1: has prompt but no completion"),
        ("score", '{"input_ids": "12"}\n', [], "line 1: input_ids must be a list of integers"),
        ("score", "[1, 2]\n", [], "line 1: expected a JSON object, got list"),
        ("score", "\n\n", [], "in.jsonl: no records to score"),
        ("score", '{"text": "a"}\n', ["--max-memory", "cpu=lots", "--device-map", "auto"], "'lots' is not a size"),
        ("evaluate", '{"prompt": "a"}\n', [], "in.jsonl: line 1: "),
        ("evaluate", "", [], "in.jsonl: no records to evaluate"),
    ],
)
def test_bad_input_is_reported_before_torch_loads(
    small_policy: Path, tmp_path: Path, command: str, lines: str, args: list[str], message: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(lines)
    out = tmp_path / "out.jsonl"
    res = _vhtool(command, small_policy, "-i", src, "-o", out, *args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    error, torch_line = res.stderr.splitlines()
    assert error.startswith("Error: ") and message in error, res.stderr
    assert torch_line == "TORCH False"  # the answer came before torch (and the model) loaded
    assert not out.exists() and src.read_text() == lines  # no output, input unmodified


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("builtin:tiny-t5", "is an encoder-decoder (t5); `vhtool score` scores causal LMs only"),
        ("builtin:tiny-gpt2", "builtin:tiny-gpt2 has no value-head weights (v_head.*)"),
    ],
)
def test_unscorable_checkpoint_is_reported_before_torch_loads(tmp_path: Path, checkpoint: str, message: str) -> None:
    for command in (["score", checkpoint, "--text", "hi"], ["evaluate", checkpoint, "-i", "pairs.jsonl"]):
        (tmp_path / "pairs.jsonl").write_text('{"prompt": "Hi.", "chosen": " Hi!", "rejected": " Go."}\n')
        res = _vhtool(*command, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert message in res.stderr and res.stderr.splitlines()[-1] == "TORCH False", res.stderr


def test_text_argument_is_named_as_an_argument(small_policy: Path, tmp_path: Path) -> None:
    res = _vhtool("score", small_policy, "--text", "fine", "--text", "", cwd=tmp_path)
    assert res.returncode == 2 and "Error: --text 2: empty text." in res.stderr, res.stderr
    assert "line" not in res.stderr.splitlines()[0]


@pytest.mark.slow
def test_txt_of_jsonl_is_warned_once(small_policy: Path, tmp_path: Path) -> None:
    src = tmp_path / "data.txt"
    src.write_text('{"text": "hi"}\n{"text": "there"}\n')
    res = _vhtool("score", small_policy, "-i", src, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("Warning:") == 1 and "data.txt: line 1 is a JSON object" in res.stderr
    assert "--format jsonl" in res.stderr
    plain = _vhtool("score", small_policy, "-i", src, "--format", "text", cwd=tmp_path)  # as asked: no warning
    assert plain.returncode == 0 and "Warning" not in plain.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["init", "x", "--v-head-init", "norml"],
            "Error: 'norml' is not a choice for --v-head-init; did you mean 'normal'?",
        ),
        (
            ["score", "policy", "--on-error", "skp"],
            "Error: 'skp' is not a choice for --on-error; did you mean 'skip'?",
        ),
        (
            ["score", "policy", "data.jsonl"],
            "Error: unexpected extra argument: data.jsonl; to read a file give -i data.jsonl",
        ),
        (["scor", "policy"], "Error: No such command 'scor'. Did you mean 'score'?"),
        (["score", "policy", "--txt", "a"], "Error: No such option: --txt"),
    ],
)
def test_usage_errors_are_one_line_naming_the_fix(cli: Callable[..., Any], argv: list[str], expected: str) -> None:
    res = cli(*argv)
    assert res.exit_code == 2
    assert res.stderr.startswith(expected), res.stderr
    assert len(res.stderr.splitlines()) == 1 and "Value error" not in res.stderr and "Usage:" not in res.stderr
    assert res.stderr.rstrip().endswith("--help'.")  # where to read more, on the same line


def test_usage_error_with_json_anywhere(tmp_path: Path) -> None:
    res = subprocess.run(
        [VHTOOL, "--json", "init", "x", "--v-head-init", "norml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["error"]["type"] == "UsageError" and "did you mean 'normal'?" in doc["error"]["message"]


def test_a_typo_of_a_local_folder_is_named_before_the_hub(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    res = _vhtool("init", "polcy", cwd=tmp_path)
    assert res.returncode == 2
    error = res.stderr.splitlines()[0]
    assert error.startswith("Error: no local folder 'polcy' (did you mean 'policy'?); cannot fetch"), error
    res = _vhtool("init", "someone/some-model", cwd=tmp_path)  # a Hub id: the Hub's answer only
    assert res.returncode == 2 and "no local folder" not in res.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "inspect-layers", "builtin:tiny-gpt2"],
        ["inspect-layers", "builtin:tiny-gpt2", "--json"],
        ["--quiet", "--json", "inspect-layers", "builtin:tiny-gpt2"],
        ["-q", "inspect-layers", "builtin:tiny-gpt2", "--json", "--debug"],
        ["--debug", "inspect-layers", "builtin:tiny-gpt2", "--json"],
    ],
)
def test_global_options_before_or_after_the_command(cli: Callable[..., Any], argv: list[str]) -> None:
    res = cli(*argv)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["model"]["model_type"] == "gpt2"


def test_debug_after_the_command_shows_the_traceback(tmp_path: Path) -> None:
    quiet = _vhtool("score", "builtin:tiny-gpt2", "--text", "", cwd=tmp_path)
    loud = _vhtool("score", "builtin:tiny-gpt2", "--text", "", "--debug", cwd=tmp_path)
    assert quiet.returncode == loud.returncode == 2
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr


@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_help_fits_80_columns(command: str) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    res = subprocess.run([VHTOOL, *([command] if command else []), "--help"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    wide = [line for line in res.stdout.splitlines() if len(line) > 80]
    assert not wide, wide
    split = [line for line in res.stdout.splitlines() if re.search(r"[A-Za-z]-$", line)]
    assert not split, split  # no name broken at its hyphen (--per-token, seq-cls, weights-only)


def test_inspect_tensors_fits_80_columns_without_splitting_names(small_policy: Path) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    res = subprocess.run(
        [VHTOOL, "inspect-layers", str(small_policy), "--tensors"], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    doc = json.loads(
        subprocess.run([VHTOOL, "inspect-layers", str(small_policy), "--json"], capture_output=True, text=True).stdout
    )
    words = set(res.stdout.split())
    for t in doc["tensors"]:
        assert t["name"] in words  # every tensor name whole, on one line
    assert "tensors (all in model.safetensors)" in res.stdout  # one file: said once, not in every row
    wide = subprocess.run(
        [VHTOOL, "inspect-layers", str(small_policy), "--tensors"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "160"},
    )
    assert "┃ shape" in wide.stdout  # room for the table: the table


def test_long_warnings_wrap_between_words(small_policy: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    res = subprocess.run(
        [VHTOOL, "push", str(small_policy), "me/x", "--dry-run"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "80", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    assert "no token found" in res.stderr and all(len(line) <= 80 for line in res.stderr.splitlines())
    sizes = re.findall(r"(\d[\d.]*) (B|KiB|MiB|GiB|MB|kB)\b", res.stdout)
    assert sizes and {unit for _, unit in sizes} <= {"B", "KiB", "MiB", "GiB"}  # inspect-layers' units


def test_result_lines_wrap_on_a_terminal_and_stay_whole_on_a_pipe(small_policy: Path, tmp_path: Path) -> None:
    """convert's "Wrote …" line is longer than 80 columns: wrapped between words on a terminal, one line on a pipe."""
    import pty

    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [VHTOOL, "convert", str(small_policy), "--to", "seq-cls", "-o", "tty-out"],
            stdout=slave,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the pty's other side is closed: everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    assert proc.returncode == 0
    lines = [line for line in b"".join(chunks).decode().replace("\r", "").splitlines() if line.strip()]
    wrote = [i for i, line in enumerate(lines) if line.startswith("Wrote ")]
    assert wrote and len(lines) > wrote[0] + 1 and all(len(line) <= 80 for line in lines), lines
    res = subprocess.run(
        [VHTOOL, "convert", str(small_policy), "--to", "seq-cls", "-o", "pipe-out"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1 and len(res.stdout) > 81, res.stdout


@pytest.mark.slow
def test_python_recipes_print_only_their_own_output(small_policy: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "VHTOOL_DEBUG")}
    subprocess.run(
        [VHTOOL, "make-reference", str(small_policy), "-o", "ref", "-q", "--no-fsync"], check=True, cwd=tmp_path
    )
    code = (
        "import vhtool; p, r = vhtool.load_policy_and_reference('" + str(small_policy) + "', 'ref'); "
        "print(len(r.shared_parameter_names), 'tensors shared')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and res.stdout.endswith("tensors shared\n")
    example = Path(__file__).parents[1] / "examples" / "make_reward_adapter.py"
    res = subprocess.run([sys.executable, str(example), "rl"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and "\x1b" not in res.stdout
    assert res.stdout.splitlines()[0].startswith("final pairwise loss")
    asked = subprocess.run(  # the user's own verbosity still speaks
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "TRANSFORMERS_VERBOSITY": "info"},
    )
    assert asked.returncode == 0 and asked.stderr != ""


def test_verify_names_a_builtin_as_the_user_does(cli: Callable[..., Any], tmp_path: Path, monkeypatch: Any) -> None:
    from vhtool.builtin import builtin_path

    monkeypatch.chdir(tmp_path)
    res = cli("verify", "builtin:tiny-gpt2")
    assert res.exit_code == 1
    text = res.stdout + res.stderr
    assert str(builtin_path("builtin:tiny-gpt2")) not in text
    assert "`vhtool init builtin:tiny-gpt2 -o tiny-gpt2-value-head` adds one" in text


def test_verify_forward_names_a_builtin_source(small_policy: Path, cli: Callable[..., Any]) -> None:
    from vhtool.builtin import builtin_path

    res = cli("verify", small_policy, "--forward")
    assert res.exit_code == 0, res.stderr
    assert "equal to builtin:tiny-gpt2's" in res.stdout
    assert str(builtin_path("builtin:tiny-gpt2")) not in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ("0", "the embeddings shared (2 tensors), none of the 2 blocks"),
        ("1", "embeddings + 1 of 2 blocks shared (transformer.h.{layer}, 14 tensors)"),
    ],
)
def test_make_reference_counts_what_it_shares(
    small_policy: Path, cli: Callable[..., Any], tmp_path: Path, layers: str, expected: str
) -> None:
    res = cli("make-reference", small_policy, "-o", tmp_path / "ref", "--shared-layers", layers, "--no-fsync")
    assert res.exit_code == 0, res.stderr
    assert expected in res.stdout, res.stdout
