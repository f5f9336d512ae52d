#!/usr/bin/env python3
"""Project tasks for phi3lab, runnable with nothing installed but Python 3.10+.

    python3 tasks.py lab        set up .venv and start JupyterLab on notebooks/
    python3 tasks.py test       set up .venv and run every test (pytest + nbval)
    python3 tasks.py test --fast  the quick tier: no slow, browser or engine tests, no notebooks (minutes)
    python3 tasks.py notebooks  re-execute every notebook in place (refresh outputs)
    python3 tasks.py bench      run the benchmarks in benchmarks/
    python3 tasks.py docs       set up .venv and build the documentation site into build/docs/html (offline:
                                README, the notebooks as stored, an API reference from the docstrings)
    python3 tasks.py demo       set up .venv and serve the classroom page (Voilà, no code shown) on 127.0.0.1
                                with a token: chat, attention and patch explorers, pictures (--port P)
    python3 tasks.py setup      only set up .venv
    python3 tasks.py serve      set up .venv-vllm (vLLM) and serve the tiny model on 127.0.0.1:8011
                                (--model DIR|HUB_ID, --port P, --enforce-eager, --setup-only)

Set-up lives in ``.venv/`` at the repository root.  It is idempotent: a stamp file records a hash
of everything that decides what is installed, and a second run with nothing changed returns in
well under a second.  On Linux without an NVIDIA driver the CPU build of ``torch==2.13.0`` is
installed before everything else, so no multi-gigabyte CUDA wheel is ever pulled in.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".phi3lab-setup"
TORCH_CPU = "torch==2.13.0"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
EXTRAS = ".[notebooks,test,quant,docs,demo]"  # one environment: the tests build the docs site and serve the demo


def _say(msg: str) -> None:
    print(f"[phi3lab] {msg}", flush=True)


def _run(*args: str | os.PathLike, env: dict | None = None) -> None:
    cmd = [str(a) for a in args]
    result = subprocess.run(cmd, cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit(f"[phi3lab] command failed ({result.returncode}): {' '.join(cmd)}")


def _has_nvidia() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def _torch_requirement() -> str:
    """The torch to install before the rest; pyproject only gives a range that admits it."""
    if platform.system() == "Linux" and not _has_nvidia():
        return TORCH_CPU  # the CPU build; a bare 'torch' would pull several GB of CUDA
    return "torch>=2.4,<=2.14.1"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "setup.py", "tasks.py"):  # what decides the install
        h.update((ROOT / name).read_bytes())
    h.update(_torch_requirement().encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def setup() -> None:
    """Create or refresh .venv; a no-op when nothing that decides the install changed."""
    want = _fingerprint()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == want:
        return
    if sys.version_info < (3, 10):
        sys.exit("[phi3lab] Python 3.10 or newer is needed; run this file with a newer python3.")
    if not PY.exists():
        _say(f"creating virtual environment in {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    torch_req = _torch_requirement()
    _say(f"installing {torch_req} (first run only; this takes a few minutes)")
    _run(*pip, torch_req)
    _say("installing phi3lab with its notebook, test, quantization, docs and demo dependencies")
    _run(*pip, "-e", EXTRAS)
    STAMP.write_text(want + "\n")
    _say("environment ready")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def lab(argv: list[str]) -> None:
    setup()
    env = _env()
    if "TQDM_DISABLE" not in os.environ:
        env.pop("TQDM_DISABLE")  # a person running cells wants to see the progress of long ones
    _say("starting JupyterLab on notebooks/ (embedded tiny model by default); open the URL below")
    args = [PY, "-m", "jupyter", "lab", "--no-browser", f"--notebook-dir={ROOT / 'notebooks'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # containers and CI machines often run as root
    if os.environ.get("PHI3LAB_PORT"):
        args.append(f"--ServerApp.port={os.environ['PHI3LAB_PORT']}")
    os.execve(str(PY), [str(a) for a in args + argv], env)


FAST = "not slow and not browser and not engine"


def test(argv: list[str]) -> None:
    """Every test (as CI runs them), or with ``--fast`` the quick tier: no slow, browser or engine tests, no nbval."""
    setup()
    env = _env()
    fast = "--fast" in argv
    argv = [a for a in argv if a != "--fast"]
    if fast:
        _say("running the quick tier (python3 tasks.py test runs everything)")
        _run(PY, "-m", "pytest", "-q", "tests", "phi3lab", "--doctest-modules", "-m", FAST, *argv, env=env)
        return
    _say("running the unit tests")
    _run(PY, "-m", "pytest", "-q", "tests", "phi3lab", "--doctest-modules", *argv, env=env)
    _say("running the notebooks under nbval")
    _run(PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_nbval_args(), env=env)


def _nbval_args() -> list[str]:
    return [
        "--nbval-lax",
        "--nbval-current-env",
        "--nbval-sanitize-with",
        "notebooks/sanitize.cfg",
        "--nbval-cell-timeout=600",
        "--nbval-kernel-startup-timeout=180",
        "notebooks",
    ]


def notebooks(argv: list[str]) -> None:
    setup()
    _run(PY, ROOT / "notebooks" / "refresh.py", *argv, env=_env())


def bench(argv: list[str]) -> None:
    setup()
    scripts = sorted((ROOT / "benchmarks").glob("*.py")) if not argv else [Path(a) for a in argv]
    for script in scripts:
        _say(f"benchmark {script.name}")
        _run(PY, script, env=_env())


def docs(argv: list[str]) -> None:
    """The documentation site, built offline into build/docs/html (docs/build.py says how)."""
    setup()
    _run(PY, ROOT / "docs" / "build.py", *argv, env=_env())


def demo(argv: list[str]) -> None:
    """The classroom page: Voilà on 127.0.0.1 with a token (phi3lab/views/classroom.py says what it shows)."""
    setup()
    env = _env()
    args = [PY, "-m", "phi3lab.views.classroom", *argv]
    os.execve(str(PY), [str(a) for a in args], env)


def serve(argv: list[str]) -> None:
    """vLLM in its own venv (.venv-vllm; it pins its own torch and transformers): see phi3lab/serving/vllm.py."""
    script = ROOT / "phi3lab" / "serving" / "vllm.py"  # standard library only: runs before .venv exists
    os.execv(sys.executable, [sys.executable, str(script), *argv])


def main(argv: list[str]) -> None:
    tasks = {
        "lab": lab,
        "test": test,
        "notebooks": notebooks,
        "bench": bench,
        "docs": docs,
        "demo": demo,
        "serve": serve,
    }
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    name, rest = argv[0], argv[1:]
    if name == "setup":
        setup()
    elif name in tasks:
        tasks[name](rest)
    else:
        sys.exit(f"[phi3lab] unknown task {name!r}; choose one of: setup, {', '.join(tasks)}")


if __name__ == "__main__":
    main(sys.argv[1:])
