"""The shape of the code: no import cycle between vhtool's modules, and checkpoint/ never imports models/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycles_and_checkpoint_never_imports_models() -> None:
    script = ROOT / "scripts" / "import_cycles.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no cycle" in out.stdout


def test_the_checker_finds_a_cycle_and_a_checkpoint_import(tmp_path: Path) -> None:
    """The checker itself: a two-module cycle at function level and a checkpoint -> models import both fail it."""
    pkg = tmp_path / "vhtool"
    for sub in ("", "checkpoint", "models"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("from vhtool.models import b\n")
    (pkg / "models" / "b.py").write_text("def f() -> None:\n    from . import a\n")
    (pkg / "checkpoint" / "op.py").write_text("def g() -> None:\n    import vhtool.models.a\n")
    script = ROOT / "scripts" / "import_cycles.py"
    out = subprocess.run([sys.executable, str(script), "--root", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "cycle among 2 modules: vhtool.models.a, vhtool.models.b" in out.stdout
    assert "vhtool.checkpoint.op (line 2) imports vhtool.models.a" in out.stdout
