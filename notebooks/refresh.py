"""Re-execute the curated notebooks in place so their stored outputs match the code.

    python3 tasks.py notebooks              # all of them
    python3 tasks.py notebooks 00_quickstart.ipynb

Each notebook is run top to bottom in a fresh kernel, with the environment CI uses and Jupyter's
inline matplotlib backend (whatever ``MPLBACKEND`` the caller set), so the stored notebooks hold
their figures; a streamed answer is stored as one output.  The code's fingerprint is stored in
``metadata.phi3lab.source_hash`` so that a test can tell when code changed without the outputs
being refreshed.  Volatile metadata is stripped.

What is stored is what JupyterLab itself would save, so opening and saving a notebook changes no byte
(``tests/test_browser_notebooks.py``): ipykernel's own kernelspec, and numbers as a browser writes them —
JavaScript has one number type, so a float that is a whole number (a widget's ``temperature`` of ``0.0``)
comes back from JupyterLab as ``0`` (:func:`browser_numbers`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
INLINE = "module://matplotlib_inline.backend_inline"  # figures become image/png outputs


def source_hash(nb) -> str:
    """Fingerprint of the notebook's code cells, in order."""
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.encode() + b"\0")
    return h.hexdigest()[:16]


def browser_numbers(node):
    """``node`` (a notebook's JSON) with each whole-number float as the integer a browser's ``JSON.stringify``
    writes (``0.0`` → ``0``, ``-0.0`` → ``0``, ``24.0`` → ``24``); other values as they are.

    >>> browser_numbers({"temperature": 0.0, "vmax": [1.0, 0.25, -0.0], "name": "x", "on": True})
    {'temperature': 0, 'vmax': [1, 0.25, 0], 'name': 'x', 'on': True}
    """
    if isinstance(node, float) and node.is_integer() and abs(node) < 2**53:
        return int(node)
    if isinstance(node, dict):
        return type(node)((k, browser_numbers(v)) for k, v in node.items())
    if isinstance(node, list):
        return [browser_numbers(v) for v in node]
    return node


def refresh(path: Path) -> None:
    import nbformat
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor, ExecutePreprocessor

    nb = nbformat.read(path, as_version=4)
    ExecutePreprocessor(timeout=600, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(HERE)}})
    CoalesceStreamsPreprocessor().preprocess(nb, {})  # a streamed answer: one output, not one per token
    nbformat.write(finish(nb), path)
    print(f"refreshed {path.name}")


def finish(nb):
    """An executed notebook as it is stored: no per-cell execution timings, the code's fingerprint, the
    kernelspec ipykernel itself writes and numbers as a browser writes them — so that opening and saving it
    in JupyterLab changes nothing."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.setdefault("phi3lab", {})["source_hash"] = source_hash(nb)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return browser_numbers(nb)


def main(argv: list[str]) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MPLBACKEND"] = INLINE  # not setdefault: a non-display backend (Agg) would drop every figure
    paths = [HERE / a for a in argv] if argv else sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        refresh(path)


if __name__ == "__main__":
    main(sys.argv[1:])
