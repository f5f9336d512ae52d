"""Stored notebooks carry nothing of the machine that ran them, and metadata that JupyterLab keeps as it is."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
MACHINE = re.compile(r"(/work/|/root/|/home/[^/\s]+/|/tmp/|/private/var/|[A-Z]:\\\\Users\\\\)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_machine_paths_in_stored_outputs(path):
    nb = json.loads(path.read_text())
    found = []
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", [])) + "".join(output.get("data", {}).get("text/plain", []))
            text += "".join(output.get("data", {}).get("text/html", []))
            for match in MACHINE.finditer(text):
                found.append((i, text[max(0, match.start() - 30) : match.end() + 30]))
    assert found == [], f"{path.name} stores this machine's paths: {found[:3]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_the_kernelspec_is_the_one_ipykernel_writes(path):
    """JupyterLab rewrites a notebook whose kernelspec differs from the running kernel's, so opening one
    would dirty the repository; the stored one is ipykernel's own."""
    from ipykernel.kernelspec import get_kernel_dict

    spec = json.loads(path.read_text())["metadata"]["kernelspec"]
    own = get_kernel_dict()
    assert spec == {"display_name": own["display_name"], "language": own["language"], "name": "python3"}


def test_the_path_pattern_finds_a_planted_path():
    assert MACHINE.search("model phi3lab-tiny (embedded: /work/main/data/models/phi3lab-tiny)")
    assert MACHINE.search("/tmp/ipykernel_9174/75538358.py:2: SystemMessageDropped")
    assert not MACHINE.search("model phi3lab-tiny (embedded: data/models/phi3lab-tiny)")


def _whole_floats(text: str) -> list[str]:
    """The numbers in JSON ``text`` written as floats that are whole numbers (``0.0``, ``24.0``, ``1e3``)."""
    found = []

    def note(literal: str) -> float:
        if float(literal).is_integer():
            found.append(literal)
        return float(literal)

    json.loads(text, parse_float=note)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_numbers_are_stored_as_a_browser_writes_them(path):
    """JupyterLab saves through JavaScript, which writes the float 0.0 as 0: a stored whole-number float would
    change on the first save (notebooks/refresh.py writes them as integers)."""
    found = _whole_floats(path.read_text())
    assert found == [], (
        f"{path.name} stores {len(found)} whole-number floats ({found[:5]}); run python3 tasks.py notebooks"
    )


def test_refresh_stores_what_jupyterlab_would_save():
    """What notebooks/refresh.py writes after running a notebook: ipykernel's kernelspec, no execution
    timings, the code's fingerprint, and whole-number floats as the integers a browser writes."""
    import nbformat
    from ipykernel.kernelspec import get_kernel_dict

    spec = importlib.util.spec_from_file_location("refresh", HERE / "refresh.py")
    refresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(refresh)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(1)", metadata={"execution": {"iopub.status.busy": "2026"}})]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["widgets"] = {"state": {"temperature": 0.0, "vmax": [1.0, 0.25, -0.0, 1e-05]}}
    assert _whole_floats(nbformat.writes(nb)) == ["0.0", "1.0", "-0.0"]
    stored = refresh.finish(nb)
    own = get_kernel_dict()
    assert stored.metadata.kernelspec == {"display_name": own["display_name"], "language": "python", "name": "python3"}
    assert stored.metadata.widgets["state"]["vmax"] == [1, 0.25, 0, 1e-05] and stored.cells[0].metadata == {}
    assert stored.metadata["phi3lab"]["source_hash"] == refresh.source_hash(nb)
    assert _whole_floats(nbformat.writes(stored)) == []
    nbformat.validate(stored)
