"""Stored notebooks carry nothing of the machine that ran them, and metadata that JupyterLab keeps as it is."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
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
