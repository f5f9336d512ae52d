"""One formatter and one linter (ruff, configured in pyproject.toml) hold for the whole tree."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed: python3 tasks.py setup installs it with the test extra")
    return [exe]


def test_the_tree_is_formatted():
    out = subprocess.run([*_ruff(), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, f"run `ruff format .`:\n{out.stdout}{out.stderr}"


def test_the_linter_finds_nothing():
    out = subprocess.run(
        [*_ruff(), "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, f"`ruff check .` reports:\n{out.stdout}{out.stderr}"


def test_a_planted_mistake_is_caught(tmp_path):
    (tmp_path / "bad.py").write_text("import os\nx=1\n")
    out = subprocess.run(
        [*_ruff(), "check", "--isolated", "--select", "F", str(tmp_path / "bad.py")], capture_output=True, text=True
    )
    assert out.returncode == 1 and "F401" in out.stdout
