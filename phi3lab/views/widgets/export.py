"""A notebook as one HTML page whose widgets render offline from their saved state.

    python -m phi3lab.views.widgets.export notebooks/02_vision_analysis.ipynb            # -> ….html beside it
    python -m phi3lab.views.widgets.export my.ipynb --execute -o report.html            # run it first

The page is nbconvert's HTML (the ``lab`` template) with three changes: the widget renderer is
phi3lab's ``widgets/embed.js`` inlined as a ``data:`` URL (it renders the saved state of every
anywidget widget with its own module), and require.js and MathJax, which nbconvert would fetch from a
CDN, are left out (math in Markdown stays as typed).  So the file is self-contained: it opens from
disk, from an e-mail, on a machine without network, and makes no request.

With plain nbconvert the same renderer works from a file::

    jupyter nbconvert --to html my.ipynb --HTMLExporter.widget_renderer_url=file:///…/widgets/embed.js

(there nbconvert still asks its CDN for require.js and MathJax; the widgets do not need them).
Widgets need their state saved in the notebook: executing with nbconvert or ``--execute`` here does
that; in JupyterLab, *Settings → Save Widget State Automatically*.  Without saved state nbconvert
shows each widget's static HTML form instead.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

from phi3lab.views.widgets._base import front_end_dir

__all__ = ["export_html", "renderer_url", "EMPTY_SCRIPT"]

EMPTY_SCRIPT = "data:text/javascript,"  # a script URL that loads nothing and asks no server


def renderer_url() -> str:
    """``widgets/embed.js`` as a ``data:`` URL, for ``HTMLExporter.widget_renderer_url``."""
    source = (front_end_dir() / "embed.js").read_bytes()
    return "data:text/javascript;base64," + base64.b64encode(source).decode("ascii")


def export_html(notebook, output=None, *, execute: bool = False, timeout: int = 600) -> Path:
    """Write ``notebook`` (a path) as a self-contained HTML page; returns the page's path.

    Args:
        notebook: the ``.ipynb`` file.
        output: where to write (default: the notebook's path with ``.html``).
        execute: run the notebook first (in its folder), saving widget state as it goes.
        timeout: seconds per cell when executing.
    """
    import nbformat
    from nbconvert import HTMLExporter

    source = Path(notebook)
    nb = nbformat.read(source, as_version=4)
    if execute:
        from nbconvert.preprocessors import ExecutePreprocessor

        ExecutePreprocessor(timeout=timeout, store_widget_state=True).preprocess(
            nb, {"metadata": {"path": str(source.resolve().parent)}}
        )
    exporter = HTMLExporter(
        widget_renderer_url=renderer_url(), require_js_url=EMPTY_SCRIPT, mathjax_url=EMPTY_SCRIPT, embed_images=True
    )
    body, _ = exporter.from_notebook_node(nb)
    target = Path(output) if output else source.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3lab.views.widgets.export", description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("-o", "--output", help="the HTML file to write (default: beside the notebook)")
    parser.add_argument("--execute", action="store_true", help="run the notebook first, saving widget state")
    args = parser.parse_args(argv)
    print(export_html(args.notebook, args.output, execute=args.execute))


if __name__ == "__main__":
    main()
