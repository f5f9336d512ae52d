"""The wheel: it lists every package, carries data/, and an install of it loads the tiny models
from anywhere — not only from a checkout."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # heavy: the full test command runs it, --fast leaves it out

LOAD_BOTH = r"""
import json, sys
import phi3lab
from phi3lab.paths import data_dir

text = phi3lab.load("tiny", verbose=False)
answer = text.chat("What is 2 plus 3?", max_new_tokens=6, stream=False)
vision = phi3lab.load("tiny-vision", verbose=False)
seen = vision.chat("<|image_1|>\nWhat colour is the circle?", [phi3lab.sample_image("shapes.png")],
                   max_new_tokens=6, stream=False)
print(json.dumps({"file": phi3lab.__file__, "data": str(data_dir()), "text": answer.text,
                  "text_tokens": answer.new_tokens, "vision_tokens": seen.new_tokens,
                  "vision_kind": vision.kind, "processor": type(vision.processor).__name__}))
"""


def _source_copy(dest: Path) -> Path:
    """What a source distribution holds, copied away from the checkout (no build files left there)."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "phi3lab", dest / "phi3lab", ignore=ignore)
    shutil.copytree(ROOT / "data", dest / "data", ignore=ignore)
    shutil.copytree(ROOT / "widgets", dest / "widgets", ignore=ignore)
    return dest


def test_built_wheel_loads_tiny_and_tiny_vision_outside_the_checkout(tmp_path):
    source = _source_copy(tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("phi3lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "phi3lab").rglob("__init__.py")}
    for package in packages:  # every package of the tree, whoever added it
        assert package.replace(".", "/") + "/__init__.py" in names, f"{package} is not in the wheel"
    for shipped in (
        "phi3lab/_data/models/phi3lab-tiny/model.safetensors",
        "phi3lab/_data/models/phi3lab-tiny-vision/preprocessor_config.json",
        "phi3lab/_data/tokenizer/tokenizer.json",
        "phi3lab/_data/images/shapes.png",
        "phi3lab/models/phi3_v/modeling.py",
        "phi3lab/tiny/train.py",
        "phi3lab/views/widgets/_front/attention.js",
        "phi3lab/views/widgets/_front/phi3lab.css",
    ):
        assert shipped in names, f"{shipped} is not in the wheel"
    data = {
        "phi3lab/_data/" + f.relative_to(source / "data").as_posix()
        for f in (source / "data").rglob("*")
        if f.is_file()
    }
    assert sorted(data - set(names)) == [], "files of data/ are missing from the wheel"
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "data/", "widgets/"))]

    target = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PHI3LAB_DATA", "PYTHONPATH")}
    env |= {"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", LOAD_BOTH], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    installed = Path(result["file"]).resolve()
    assert installed.is_relative_to(target.resolve()) and not installed.is_relative_to(ROOT)
    assert Path(result["data"]).resolve() == (target / "phi3lab" / "_data").resolve()
    assert result["vision_kind"] == "embedded" and result["processor"] == "Phi3VProcessor"
    assert result["text_tokens"] > 0 and result["vision_tokens"] > 0
    assert "5" in result["text"]
