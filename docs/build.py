"""Build phi3lab's documentation site: the README, the notebooks as they are stored, and an API
reference generated from the code's docstrings.

    python3 tasks.py docs                 # set up .venv, build build/docs/html, print where it is
    .venv/bin/python docs/build.py [OUT]  # the same build, into OUT

The engine is Sphinx with myst-nb (README.md explains the choice).  The build runs offline and
never executes a notebook: the pages show each notebook's stored outputs, figures and widgets,
whose saved state is drawn by phi3lab's own renderer (``widgets/embed.js``, copied into the site),
so no page asks a CDN for anything.  It happens in three steps:

1. **Stage** a source tree in ``build/docs/src``: ``docs/`` (configuration, landing page), the
   README, ``notebooks/*.ipynb`` and the widget renderer.  Nothing in the checkout is written to; a
   widget output that is not phi3lab's keeps only its static form (:func:`static_widgets`).
2. **Generate** one API page per public module, found by walking the package at build time
   (:func:`api_modules`), grouped by layer: a module added to any layer appears without an edit.
3. **Build** with ``sphinx-build`` and **check** that no page, stylesheet or script loads anything
   from another host (:func:`external_resources`); a build that would fetch something fails.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DEFAULT_OUT = ROOT / "build" / "docs"

#: The package's layers, lowest first (tests/test_layers.py), and what each holds, for the API index.
LAYERS = {
    "foundation": "argument checks, paths and the package's lazy names",
    "models": "native Phi-3-vision for transformers (standalone)",
    "prompts": "chat templates, token tables, budgets, pictures and their HD geometry, Inputs",
    "runtime": "hardware probes, the attention choice, the model registry, load, Lab, generation",
    "inspect": "hooks, attention capture, Cache, maps, the logit lens, interventions, patching",
    "attribution": "captum attributions by word, turn and picture region, faithfulness curves",
    "views": "drawing: matplotlib plots, notebook widgets, rich displays",
    "safety": "probe sets, transforms, the refusal detector, sweeps, reports, the refusal direction",
    "serving": "the vLLM launcher",
    "cli": "the phi3lab command",
}
#: Not documented as API: the training code of the embedded models (nothing outside it may import it).
SKIP = ("tiny",)


def api_modules(package: str = "phi3lab") -> dict[str, list[str]]:
    """Every public module of ``package``, by layer: found by walking the package, not listed by hand.

    A module is public when no part of its dotted name starts with ``_``; the training code
    (``<package>.tiny``) and the registration shim ``<package>.models`` (its package ``phi3_v`` is the
    API) are left out.  Top-level modules belong to ``foundation``; each list is sorted.
    """
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or parts[1] in SKIP or info.name == f"{package}.models":
            continue
        names.append(info.name)
    by_layer: dict[str, list[str]] = {layer: [] for layer in LAYERS}
    for name in sorted(names):
        parts = name.split(".")
        by_layer[parts[1] if len(parts) > 1 and parts[1] in LAYERS else "foundation"].append(name)
    return {layer: modules for layer, modules in by_layer.items() if modules}


def _title(module: str) -> str:
    doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()
    first = doc[0].strip() if doc else ""
    return f"``{module}``" + (f" — {_rst_text(_plain(first))}" if first else "")


def _rst_text(text: str) -> str:
    """Plain text made literal for reStructuredText (``|x|`` is a substitution, ``x_`` a link, otherwise)."""
    return re.sub(r"([\\|_*`])", r"\\\1", text)


def _plain(line: str) -> str:
    """A docstring's first line as plain text for a title (roles and markup dropped)."""
    line = re.sub(r":\w+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", line)
    line = line.replace("``", "").replace("*", "").replace("`", "")
    return line.rstrip(":")


def write_api(src: Path, package: str = "phi3lab") -> list[str]:
    """Write ``api/index.rst`` and one ``api/<module>.rst`` per public module; returns the modules."""
    folder = src / "api"
    folder.mkdir(parents=True, exist_ok=True)
    layers = api_modules(package)
    index = [
        "API reference",
        "=============",
        "",
        "Generated from the docstrings each time the site is built: one page per public module,",
        "grouped by layer, lowest first (a module imports only its own layer and the layers below).",
        "",
    ]
    written = []
    for layer, modules in layers.items():
        heading = f"{layer} — {LAYERS[layer]}"
        index += [heading, "-" * len(heading), "", ".. toctree::", "   :maxdepth: 1", ""]
        for module in modules:
            index.append(f"   {module}")
            title = _title(module)
            page = [title, "=" * len(title), "", f".. automodule:: {module}"]
            is_package = hasattr(importlib.import_module(module), "__path__")
            page += ["   :no-members:"] if is_package else ["   :members:", "   :show-inheritance:"]
            (folder / f"{module}.rst").write_text("\n".join(page) + "\n", encoding="utf-8")
            written.append(module)
        index.append("")
    (folder / "index.rst").write_text("\n".join(index) + "\n", encoding="utf-8")
    return written


def stage(src: Path) -> None:
    """Lay out the source tree: docs/, the README, the notebooks (copies) and the widget renderer."""
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("build.py", "__pycache__"))
    shutil.copy2(ROOT / "README.md", src / "README.md")
    (src / "notebooks").mkdir()
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        (src / "notebooks" / notebook.name).write_text(json.dumps(static_widgets(notebook)), encoding="utf-8")
    static = src / "_static"
    static.mkdir(exist_ok=True)
    shutil.copy2(ROOT / "widgets" / "embed.js", static / "phi3lab-embed.js")


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def static_widgets(notebook: Path) -> dict:
    """The notebook's JSON with every widget output the site cannot draw reduced to its stored static forms.

    The site draws phi3lab's widgets (anywidget models, whose saved state carries their ``_esm`` module)
    with ``widgets/embed.js``; any other widget in an output (a progress bar, an ``ipywidgets`` box)
    would need Jupyter's widget manager from a CDN, so its output keeps only its ``text/html`` or
    ``text/plain`` form — what GitHub shows.  The notebook file itself is not changed.
    """
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            view = data.get(WIDGET_VIEW)
            if view is None:
                continue
            saved = state.get(view.get("model_id"), {}).get("state", {})
            if not isinstance(saved.get("_esm"), str) and len(data) > 1:
                del data[WIDGET_VIEW]
    return nb


_RESOURCE = re.compile(
    r"""<(?:script|img|iframe|source|audio|video|embed)\b[^>]*?\bsrc\s*=\s*["']([^"']+)["']"""
    r"""|<link\b[^>]*?\bhref\s*=\s*["']([^"']+)["']"""
    r"""|@import\s+(?:url\()?["']?([^"')\s;]+)"""
    r"""|url\(\s*["']?([^"')]+)["']?\s*\)""",
    re.I,
)


def external_resources(site: Path) -> list[str]:
    """``file: url`` for every resource a page, stylesheet or script of ``site`` would load from
    another host (scripts, stylesheets, images, fonts, ``@import``); plain ``<a href>`` links to other
    sites are not loads and are allowed."""
    found = []
    for path in sorted(site.rglob("*")):
        if path.suffix not in (".html", ".css") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in _RESOURCE.finditer(text):
            url = next(g for g in match.groups() if g)
            if re.match(r"^(?:https?:)?//", url.strip(), re.I):
                found.append(f"{path.relative_to(site)}: {url}")
    return found


def build(out: Path | str = DEFAULT_OUT, *, quiet: bool = True) -> Path:
    """Stage, generate and build the site into ``out/html``; returns the folder of ``index.html``.

    Raises:
        RuntimeError: sphinx-build failed (its output is in the message), or a page would load
            something from another host.
    """
    out = Path(out)
    src, html = out / "src", out / "html"
    stage(src)
    write_api(src)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "sphinx", "-b", "html", "--keep-going", "-j", "1", str(src), str(html)]
    if quiet:
        args.insert(3, "-q")
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=quiet, text=True)
    if result.returncode != 0:
        log = (result.stdout or "") + (result.stderr or "") if quiet else ""
        raise RuntimeError(f"sphinx-build failed ({result.returncode}); fix the first error below.\n{log[-6000:]}")
    if quiet:  # Sphinx's warnings (docstring markup it could not read), kept beside the site
        (out / "warnings.txt").write_text(result.stderr, encoding="utf-8")
    leaks = external_resources(html)
    if leaks:
        raise RuntimeError(
            "the site would load resources from other hosts (it must work offline); serve them from _static:\n  "
            + "\n  ".join(leaks[:20])
        )
    return html


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    site = build(out, quiet=False)
    print(f"[phi3lab] documentation site: {site / 'index.html'}")


if __name__ == "__main__":
    main(sys.argv[1:])
