"""The committed notebooks were executed after their code last changed (see notebooks/refresh.py)."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
spec = importlib.util.spec_from_file_location("refresh", NOTEBOOKS / "refresh.py")
refresh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refresh)
DRAWS = re.compile(r"\b(plt|plotting)\.\w+\(")  # a cell that calls matplotlib or phi3lab.views.plotting
MIN_FIGURES = {  # figures each notebook must have stored
    "02_vision_analysis.ipynb": 5,  # the pictures, two HD layouts, attention on the picture, rollout
    "03_interpretability.ipynb": 8,
    "04_safety_probing.ipynb": 4,
    "05_vision_interpretability.ipynb": 7,  # sinks, word reads, patch lens, causal maps, three maps, two on several pictures
}


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


def _run_nbval(folder: Path) -> int:
    import shutil
    import subprocess
    import sys

    shutil.copy(NOTEBOOKS / "conftest.py", folder)
    shutil.copy(NOTEBOOKS / "sanitize.cfg", folder)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--nbval-lax",
        "--nbval-current-env",
        "--nbval-sanitize-with",
        str(folder / "sanitize.cfg"),
        str(folder),
    ]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300).returncode


@pytest.mark.parametrize("stored, expected_rc", [("1921\n", 0), ("1920\n", 1)])
@pytest.mark.slow
def test_a_changed_token_count_fails_nbval(tmp_path, stored, expected_rc):
    """A checked cell whose stored output no longer matches (a token count) fails the run."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    nb = new_notebook(
        cells=[
            new_markdown_cell("# check"),
            new_code_cell(
                "# NBVAL_CHECK_OUTPUT\nfrom phi3lab.prompts.patches import num_image_tokens\nprint(num_image_tokens(800, 600))",
                execution_count=1,
                outputs=[new_output("stream", name="stdout", text=stored)],
            ),
        ]
    )
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, tmp_path / "check.ipynb")
    assert _run_nbval(tmp_path) == expected_rc


def _figures(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", ()))


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_every_drawing_cell_stored_its_figure(path):
    """The refresh ran with a display backend: each cell that draws holds an image/png."""
    nb = nbformat.read(path, as_version=4)
    drawing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and DRAWS.search(c.source)]
    blank = [i for i in drawing if not _figures(nb.cells[i])]
    assert not blank, f"{path.name}: cells {blank} draw but stored no figure; run `python3 tasks.py notebooks`"


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_renders_to_html_with_figures(path):
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    html, _ = HTMLExporter().from_notebook_node(nb)
    figures = sum(_figures(c) for c in nb.cells if c.cell_type == "code")
    assert figures >= MIN_FIGURES.get(path.name, 0), f"{path.name}: {figures} figures stored"
    assert html.count("data:image/png;base64") >= figures
    assert nb.cells[0].source.splitlines()[0][2:] in html


def test_figure_minimums_name_real_notebooks():
    assert set(MIN_FIGURES) <= {p.name for p in PATHS}
