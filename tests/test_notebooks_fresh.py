"""The committed notebooks were executed after their code last changed (see notebooks/refresh.py)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
spec = importlib.util.spec_from_file_location("refresh", NOTEBOOKS / "refresh.py")
refresh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refresh)


def test_there_are_notebooks():
    assert PATHS, "notebooks/ holds no curated notebooks"


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_outputs_match_the_code(path):
    nb = nbformat.read(path, as_version=4)
    stored = nb.metadata.get("phi3lab", {}).get("source_hash")
    assert stored == refresh.source_hash(nb), (
        f"{path.name}: code changed since its outputs were produced; run `python3 tasks.py notebooks {path.name}`"
    )
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: not executed top to bottom in one kernel"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_reads_as_a_document(path):
    """A title, and a sentence of prose before every code cell."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and not cell.source.lstrip().startswith("assert"):
            assert nb.cells[i - 1].cell_type == "markdown", f"{path.name}: code cell {i} has no prose before it"


def test_sanitize_patterns_are_all_read():
    from nbval.plugin import get_sanitize_patterns

    text = (NOTEBOOKS / "sanitize.cfg").read_text()
    assert len(get_sanitize_patterns(text)) == text.count("regex: ") == 5
