import os
import shutil
from pathlib import Path

import pytest

from phi3lab.paths import embedded_dir, reference_dir

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No test touches the network or the user's HF cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's, through Playwright) for every browser test of the session: Playwright's
    sync API runs one instance per thread, so the test modules share it.  Skips, saying what to install, without."""
    from browser_support import chromium

    with chromium() as instance:
        yield instance


@pytest.fixture(scope="session")
def tiny():
    import phi3lab

    return phi3lab.load("tiny", verbose=False)


@pytest.fixture(scope="session")
def vision():
    """The embedded Phi-3-vision model (tests that change its settings restore them)."""
    import phi3lab

    return phi3lab.load("tiny-vision", verbose=False)


@pytest.fixture(scope="session")
def reader():
    """The embedded reader: the vision model trained further to read requests off pictures."""
    import phi3lab

    return phi3lab.load("tiny-vision-reader", verbose=False)


@pytest.fixture(scope="session")
def picture():
    """The shipped picture with three shapes."""
    import phi3lab

    return phi3lab.sample_image("shapes.png")


@pytest.fixture(scope="session")
def reference():
    """../shared/reference, or a skip that says why (a user's clone does not have it)."""
    path = reference_dir()
    if not path.is_dir():
        pytest.skip(f"the official-code fixtures are not at {path} (they come with the project's shared/ folder)")
    return path


def make_hub_cache(cache: Path, repo_id: str, source: Path, revision: str = "main", sha: str = "0" * 40) -> Path:
    """Lay ``source``'s files out as huggingface_hub caches a snapshot of ``repo_id``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    shutil.copytree(source, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    return snap


@pytest.fixture
def tiny_folder():
    return embedded_dir() / "phi3lab-tiny"
