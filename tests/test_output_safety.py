"""Nothing is ever lost: ``--force`` and ``-o`` replace only a previous vhtool output; every failure is one line.

Each destructive spelling is run as a real command against a user's project folder (a ``.git`` and a
``train.py``) and against the command's own inputs; the folders must be byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TINY_LLAMA_PRESET, make_reward_adapter, tree_bytes


def vhtool_run(
    *args: object, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The console entry point (``vhtool.cli.app:main``) in a child process."""
    code = "import sys; from vhtool.cli.app import main; sys.argv[0] = 'vhtool'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *(str(a) for a in args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A policy (init of builtin:tiny-llama), a reward adapter that fits it, and a score input file."""
    from typer.testing import CliRunner

    from vhtool.cli.app import app

    root = tmp_path_factory.mktemp("made")
    runner = CliRunner()
    res = runner.invoke(app, ["init", "builtin:tiny-llama", "-o", str(root / "policy"), "--v-head-init", "normal"])
    assert res.exit_code == 0, res.stderr
    adapter = make_reward_adapter(root / "adapter", TINY_LLAMA_PRESET)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"hello {i}"}) + "\n" for i in range(3)))
    return {"policy": root / "policy", "adapter": adapter, "data": data}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user's project: a git repository with a train.py, as the current directory."""
    proj = tmp_path / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    (proj / "train.py").write_text("print(1)\n")
    monkeypatch.chdir(proj)
    yield proj


def copy_policy(made: dict[str, Path], where: Path) -> Path:
    shutil.copytree(made["policy"], where)
    return where


def writers(made: dict[str, Path], inp: Path | str) -> dict[str, list[str]]:
    """Every writing command, reading ``inp`` (a policy-like checkpoint)."""
    return {
        "init": ["init", "builtin:tiny-llama"],
        "make-reference": ["make-reference", str(inp)],
        "attach-reward-adapter": ["attach-reward-adapter", str(inp), str(made["adapter"])],
        "convert": ["convert", str(inp), "--to", "sidecar"],
    }


CWD_SPELLINGS = [".", "", "./", "{cwd}", "../proj", "./../proj", "{cwd}/.", "{cwd}/../proj"]


@pytest.mark.parametrize("command", ["init", "make-reference", "attach-reward-adapter", "convert"])
@pytest.mark.parametrize("force", [False, True], ids=["no-force", "force"])
def test_current_directory_and_ancestors_are_never_replaced(
    made: dict[str, Path], project: Path, cli: Callable[..., Any], command: str, force: bool
) -> None:
    before = tree_bytes(project)
    args = writers(made, made["policy"])[command]
    spellings = [s.replace("{cwd}", str(project)) for s in CWD_SPELLINGS] + [
        "..",
        "../..",
        "/",
        os.path.expanduser("~"),
    ]
    for spelling in spellings:
        res = cli(*args, "-o", spelling, *(["--force"] if force else []))
        assert res.exit_code == 2, (spelling, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (spelling, res.stderr)
        assert "--force" not in res.stderr  # never suggest what would be refused
        assert "Traceback" not in res.stderr
    assert tree_bytes(project) == before


def test_current_directory_refused_by_the_console_script_too(made: dict[str, Path], project: Path) -> None:
    before = tree_bytes(project)
    res = vhtool_run("make-reference", made["policy"], "-o", ".", "--force", cwd=project)
    assert res.returncode == 2 and "current directory" in res.stderr and "--force" not in res.stderr
    res = vhtool_run("init", "builtin:tiny-llama", "-o", "", "--force", cwd=project)
    assert res.returncode == 2 and "current directory" in res.stderr
    assert tree_bytes(project) == before


@pytest.mark.parametrize("command", ["make-reference", "attach-reward-adapter", "convert"])
def test_the_output_is_never_the_input_however_spelled(
    made: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., Any], command: str
) -> None:
    pol = copy_policy(made, tmp_path / "pol")
    (tmp_path / "link-to-pol").symlink_to(pol)
    (tmp_path / "elsewhere").mkdir()
    before = tree_bytes(pol)
    # Run from inside the policy, from beside it and from elsewhere, with every spelling of it.
    cases = [
        (pol, ["../pol", "./../pol", str(pol), str(tmp_path / "elsewhere" / ".." / "pol"), "../link-to-pol"]),
        (tmp_path, ["pol", "./pol", "pol/", "link-to-pol", "elsewhere/../pol", "pol/inside", "pol/."]),
        (tmp_path / "elsewhere", ["../pol", str(pol), "../link-to-pol", "../link-to-pol/sub"]),
    ]
    for cwd, spellings in cases:
        monkeypatch.chdir(cwd)
        for input_spelling in (str(pol), "../link-to-pol" if cwd != tmp_path else "link-to-pol"):
            args = writers(made, input_spelling)[command]
            for spelling in spellings:
                res = cli(*args, "-o", spelling, "--force")
                assert res.exit_code == 2, (cwd, input_spelling, spelling, res.stderr)
                assert "--force" not in res.stderr and res.stderr.count("\n") == 1
    assert tree_bytes(pol) == before
    # The adapter is an input too.
    if command == "attach-reward-adapter":
        monkeypatch.chdir(tmp_path)
        adapter_before = tree_bytes(made["adapter"])
        for spelling in (str(made["adapter"]), str(made["adapter"]) + "/x"):
            res = cli("attach-reward-adapter", pol, made["adapter"], "-o", spelling, "--force")
            assert res.exit_code == 2 and "input" in res.stderr
        assert tree_bytes(made["adapter"]) == adapter_before


def test_an_output_that_contains_an_input_is_refused(
    made: dict[str, Path], tmp_path: Path, cli: Callable[..., Any]
) -> None:
    # A folder of checkpoint files that also holds the input policy as a subfolder.
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "config.json").write_text("{}")
    pol = copy_policy(made, outer / "pol")
    before = tree_bytes(outer)
    res = cli("make-reference", pol, "-o", outer, "--force")
    assert res.exit_code == 2 and "--force" not in res.stderr
    assert tree_bytes(outer) == before


def test_the_input_through_a_bind_mount_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    """A bind mount is the same directory under another real path: device/inode tells them apart."""
    pol = copy_policy(made, tmp_path / "pol")
    bind = tmp_path / "bind"
    bind.mkdir()
    before = tree_bytes(pol)
    code = "import sys; from vhtool.cli.app import main; main()"
    script = f"mount --bind {pol} {bind} && {sys.executable} -c '{code}' make-reference {pol} -o {bind} --force"
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "is the input" in res.stderr and "--force" not in res.stderr
    assert tree_bytes(pol) == before


@pytest.mark.parametrize("command", ["init", "make-reference", "attach-reward-adapter", "convert"])
def test_force_refuses_user_folders_files_and_links(
    made: dict[str, Path], tmp_path: Path, cli: Callable[..., Any], command: str
) -> None:
    args = writers(made, made["policy"])[command]
    mine = tmp_path / "mine"
    shutil.copytree(made["policy"], mine)  # a checkpoint folder...
    (mine / "notes.py").write_text("x = 1\n")  # ...in which the user put their own file
    gitdir = tmp_path / "repo"
    gitdir.mkdir()
    subprocess.run(["git", "init", "-q", str(gitdir)], check=True)
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    (tmp_path / "link-to-repo").symlink_to(gitdir)
    (tmp_path / "link-to-prev").symlink_to(made["policy"])
    snapshots = {p: tree_bytes(p) for p in (mine, gitdir)}
    for target in (mine, gitdir, data, tmp_path / "link-to-repo", tmp_path / "link-to-prev"):
        for extra in ([], ["--force"]):
            res = cli(*args, "-o", target, *extra)
            assert res.exit_code == 2, (target, extra, res.stderr)
            assert "--force" not in res.stderr, res.stderr
            assert any(w in res.stderr for w in ("remove it yourself", "symbolic link", "the input")), res.stderr
    assert {p: tree_bytes(p) for p in (mine, gitdir)} == snapshots
    assert data.read_text() == "a,b\n1,2\n"
    assert os.readlink(tmp_path / "link-to-repo") == str(gitdir)


@pytest.mark.parametrize("command", ["init", "make-reference", "attach-reward-adapter", "convert"])
def test_force_still_replaces_a_previous_vhtool_output(
    made: dict[str, Path], tmp_path: Path, cli: Callable[..., Any], command: str
) -> None:
    args = writers(made, made["policy"])[command]
    out = tmp_path / "out"
    assert cli(*args, "-o", out).exit_code == 0
    res = cli(*args, "-o", out)
    assert res.exit_code == 2 and "pass --force" in res.stderr  # the suggestion...
    res = cli(*args, "-o", out, "--force")
    assert res.exit_code == 0, res.stderr  # ...works
    # An empty directory and a bare save_pretrained folder (no vhtool.json) may be replaced too.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(*args, "-o", empty, "--force").exit_code == 0
    saved = tmp_path / "saved"
    import transformers as tf

    tf.AutoModelForCausalLM.from_pretrained(made["policy"]).save_pretrained(saved)
    tf.AutoTokenizer.from_pretrained(made["policy"]).save_pretrained(saved)
    assert cli(*args, "-o", saved, "--force").exit_code == 0, sorted(p.name for p in saved.iterdir())


def test_score_output_file_rules(made: dict[str, Path], tmp_path: Path, cli: Callable[..., Any]) -> None:
    base = ["score", made["policy"], "--input", made["data"]]
    out = tmp_path / "scores.jsonl"
    assert cli(*base, "-o", out).exit_code == 0
    first = out.read_bytes()
    res = cli(*base, "-o", out)
    assert res.exit_code == 2 and "pass --force" in res.stderr
    assert cli(*base, "-o", out, "--force").exit_code == 0 and out.read_bytes() == first
    # A file that is not a score output, the input itself, a file in the checkpoint: never replaced.
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for target in (notes, made["data"], made["policy"] / "config.json", tmp_path / "policy-link"):
        if target.name == "policy-link":
            target.symlink_to(out)
        before = target.read_bytes()
        res = cli(*base, "-o", target, "--force")
        assert res.exit_code == 2 and "--force" not in res.stderr, (target, res.stderr)
        assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*vhtool*"))  # no temporary or lock file left behind


@pytest.mark.parametrize(
    "argv, words",
    [
        (["init", "builtin:tiny-gpt2", "-o", "/proc/vhtool-out"], "cannot be written there"),
        (["init", "builtin:tiny-gpt2", "-o", "/sys/kernel/vhtool-x"], "cannot be written there"),
        (["init", "builtin:tiny-gpt2", "-o", "..", "--force"], "ancestor of the current directory"),
        (["score", "builtin:tiny-gpt2", "--text", "hi", "-o", "notes.txt/x.jsonl"], "is a file, not a directory"),
        (["score", "builtin:tiny-gpt2", "--text", "hi", "-o", "/proc/x.jsonl"], "cannot be written there"),
        (["init", "builtin:tiny-gpt2", "-o", "missing/deeper/out"], "parent directory does not exist"),
    ],
)
def test_os_failures_on_the_output_are_one_clean_line(
    project: Path, argv: list[str], words: str, cli: Callable[..., Any]
) -> None:
    (project / "notes.txt").write_text("n\n")
    before = tree_bytes(project)
    res = vhtool_run(*argv, cwd=project)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error: ") and words in res.stderr, res.stderr
    for raw in ("FileNotFoundError", "PermissionError", "NotADirectoryError", "Traceback", "Errno"):
        assert raw not in res.stderr
    assert tree_bytes(project) == before
    suggested = re.search(r"\((mkdir -p [^)]+)\)", res.stderr)
    if suggested:  # the suggestion works: after it, the same command succeeds
        subprocess.run(suggested.group(1), shell=True, cwd=project, check=True)
        assert vhtool_run(*argv, cwd=project).returncode == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["init", "builtin:nope"],
        ["init", "builtin:tiny-gpt2", "-o", "."],
        ["init", "builtin:tiny-gpt2", "--v-head-init", "xavier"],
        ["init", "builtin:tiny-gpt2", "--no-such-flag"],
        ["score", "{policy}", "--text", "hi", "--batch-size", "0"],
        ["score", "{missing}", "--text", "hi"],
        ["verify", "{missing}"],
        ["verify", "{broken}"],
        ["inspect-layers", "{missing}"],
        ["inspect-layers", "{policy}", "--require-reward-adapter"],
        ["push", "{missing}", "user/repo"],
        ["push", "{policy}", "not a repo id"],
        ["make-reference", "{policy}", "-o", "{policy}", "--force"],
    ],
)
def test_json_failures_are_one_json_object(
    made: dict[str, Path], tmp_path: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(made["policy"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated: verify fails (exit 1)
    subst = {"{policy}": str(made["policy"]), "{missing}": str(tmp_path / "missing"), "{broken}": str(broken)}
    args = [subst.get(a, a) for a in argv] + ["--json"]
    res = vhtool_run(*args, cwd=tmp_path)
    assert res.returncode in (1, 2), res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1, res.stdout
    doc = json.loads(lines[0])
    assert doc["exit_code"] == res.returncode
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    assert isinstance(doc["error"]["type"], str)
    assert res.stderr.splitlines()[0].startswith("Error: ") or "Usage:" in res.stderr
