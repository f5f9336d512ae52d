"""Opening a notebook in JupyterLab and saving it changes nothing: no notebook is marked modified when it opens
and its kernel starts, and saving writes the very bytes the repository holds.

JupyterLab rewrites a notebook whose stored metadata differs from what its kernel reports (the kernelspec's
display name, ``language_info``); autosave then dirtied the repository, once in the middle of a run with the
outputs lost.  Here headless Chromium (Debian's, the session's one from tests/conftest.py) opens each
notebook in JupyterLab 4 on 127.0.0.1 — served from a copy of ``notebooks/`` in a temporary folder, so the
repository's files are never written — waits for its kernel, checks the document is not dirty, saves it
and compares the saved file byte for byte with the repository's, whose ``git status`` must not change
either.  Every wait is bounded; the server is started through :func:`phi3lab.serving.guard.spawn`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from browser_support import Watch, jupyter_lab

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OPEN_TIMEOUT = 120_000  # ms for JupyterLab to show a notebook and start its kernel on a loaded machine

# The panel of notebook `path` (not merely the current one: JupyterLab may restore others), its kernel
# ready; a second for JupyterLab to write what the kernel reported into the metadata; whether the document
# is dirty then; saved; the kernel shut down and the panel closed.  Rejects after `limit` ms.
OPEN_AND_SAVE = """async ([path, limit]) => {
    const work = (async () => {
        const app = window.jupyterapp;
        let panel = null;
        while (!panel) {
            panel = Array.from(app.shell.widgets("main")).find((w) => w.context && w.context.path === path) || null;
            if (!panel) await new Promise((resolve) => setTimeout(resolve, 200));
        }
        await panel.context.ready;
        await panel.sessionContext.ready;
        const kernel = panel.sessionContext.session.kernel;
        await kernel.info;
        await new Promise((resolve) => setTimeout(resolve, 1000));
        const dirty = panel.context.model.dirty;
        const kernelspec = panel.context.model.getMetadata("kernelspec") || null;
        await panel.context.save();
        await panel.sessionContext.shutdown();
        panel.dispose();
        return { dirty, kernel: kernel.name, kernelspec, path: panel.context.path };
    })();
    const late = new Promise((_, reject) => setTimeout(() => reject(new Error(`${path} not saved after ${limit} ms`)), limit));
    return Promise.race([work, late]);
}"""


def _git_status() -> str | None:
    """``git status --porcelain notebooks/`` of the repository, or ``None`` outside a git checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    done = subprocess.run(
        ["git", "status", "--porcelain", "notebooks/"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    return done.stdout if done.returncode == 0 else None


def _difference(before: bytes, after: bytes) -> str:
    """Where two notebook files differ, for the failure message: the changed top-level metadata keys, else
    the first differing line."""
    try:
        old, new = json.loads(before), json.loads(after)
    except ValueError:
        return "the saved file is not JSON"
    keys = sorted(
        k for k in old["metadata"].keys() | new["metadata"].keys() if old["metadata"].get(k) != new["metadata"].get(k)
    )
    if keys:
        return "metadata " + ", ".join(
            f"{k}: {old['metadata'].get(k)!r} → {new['metadata'].get(k)!r}"[:300] for k in keys
        )
    for number, (a, b) in enumerate(zip(before.splitlines(), after.splitlines()), start=1):
        if a != b:
            return f"line {number}: {a[:120]!r} → {b[:120]!r}"
    return f"length {len(before)} → {len(after)} bytes"


@pytest.fixture(scope="module")
def lab_copy(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a copy of the repository's notebooks (never run here)."""
    root = tmp_path_factory.mktemp("lab-notebooks")
    for path in NOTEBOOKS:
        shutil.copy2(path, root / path.name)
    with jupyter_lab(root) as (base, token):
        yield root, base, token


def test_there_are_notebooks_to_open():
    assert len(NOTEBOOKS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_opening_and_saving_a_notebook_in_jupyterlab_changes_no_byte(browser, lab_copy, path):
    root, base, token = lab_copy
    stored, status = path.read_bytes(), _git_status()
    assert (root / path.name).read_bytes() == stored
    watch = Watch(browser)
    try:
        page = watch.page
        page.goto(f"{base}/lab/tree/{path.name}?reset&token={token}")  # reset: no other notebook restored
        page.wait_for_function("window.jupyterapp && window.jupyterapp.shell", timeout=OPEN_TIMEOUT)
        seen = page.evaluate(OPEN_AND_SAVE, [path.name, OPEN_TIMEOUT])
        assert watch.left == [], f"requests left 127.0.0.1: {watch.left[:5]}"
    finally:
        watch.close()
    saved = (root / path.name).read_bytes()
    assert seen["kernel"] == "python3" and seen["path"] == path.name, seen
    assert not seen["dirty"], (
        f"JupyterLab marked {path.name} modified as soon as it opened (stored kernelspec "
        f"{json.loads(stored)['metadata'].get('kernelspec')}, the kernel's {seen['kernelspec']}): "
        f"{_difference(stored, saved)}"
    )
    assert saved == stored, f"saving {path.name} in JupyterLab changed it: {_difference(stored, saved)}"
    assert _git_status() == status
