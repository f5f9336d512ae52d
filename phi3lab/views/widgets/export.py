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

In the page the widgets can still be explored: each saved its ``offline`` payload (at most
:data:`~phi3lab.views.widgets._base.OFFLINE_BYTES`, 256 KiB of text per widget): the attention
explorer's captured rows (each row's 24 strongest chips, one byte each; rows evenly spaced when more
than fit), the patch explorer's grids for every answer token, the attribution view's scores for every
target token.  Hovering and clicking answer from that payload; what needs Python (rollout, another
aggregation, a new chat turn) is switched off, and each widget says what it holds.

The page is titled with the notebook's name, carries a ``generator`` mark, and is written atomically
(a temporary file in the same folder, then renamed): an interrupted export leaves no half page, and an
existing file without the mark — not a page this command wrote — is never replaced unless asked
(``--force`` / ``overwrite=True``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from phi3lab.views.widgets._base import front_end_dir

__all__ = ["export_html", "renderer_url", "EMPTY_SCRIPT", "GENERATOR"]

EMPTY_SCRIPT = "data:text/javascript,"  # a script URL that loads nothing and asks no server
GENERATOR = '<meta name="generator" content="phi3lab.views.widgets.export">'


def renderer_url() -> str:
    """``widgets/embed.js`` as a ``data:`` URL, for ``HTMLExporter.widget_renderer_url``."""
    source = (front_end_dir() / "embed.js").read_bytes()
    return "data:text/javascript;base64," + base64.b64encode(source).decode("ascii")


def _ours(path: Path) -> bool:
    """Whether ``path`` is a page this module wrote (its ``generator`` mark in the first 8 KiB)."""
    try:
        with open(path, "rb") as f:
            return GENERATOR.encode() in f.read(8192)
    except OSError:
        return False


def _read(source: Path):
    import nbformat

    if not source.is_file():
        why = "is a folder" if source.is_dir() else "does not exist"
        raise FileNotFoundError(f"the notebook {source} {why}; pass the path of an .ipynb file")
    try:
        return nbformat.read(source, as_version=4)
    except (json.JSONDecodeError, UnicodeDecodeError, nbformat.reader.NotJSONError) as exc:
        why = f"not valid JSON ({str(exc).splitlines()[0][:120]})"
    except (nbformat.ValidationError, KeyError, TypeError, AttributeError) as exc:
        why = f"not a valid notebook ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    raise ValueError(
        f"{source} is {why}; restore it (e.g. git checkout -- {source}) or save it again from Jupyter"
    ) from None


def _target(source: Path, output, overwrite: bool) -> Path:
    target = Path(output) if output else source.with_suffix(".html")
    if target.suffix.lower() == ".ipynb" or target.resolve() == source.resolve():
        raise ValueError(f"the page would overwrite the notebook {target}; pass -o with an .html path")
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"the folder {target.parent} does not exist; create it first (mkdir -p {target.parent}) "
            "or pass -o into an existing folder"
        )
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; pass -o with a file name, e.g. {target / source.stem}.html")
    if target.exists() and not overwrite and not _ours(target):
        raise FileExistsError(
            f"{target} exists and is not a page phi3lab's export wrote; choose another -o, or pass --force "
            "(overwrite=True) to replace it"
        )
    return target


def write_atomically(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` through a temporary file in the same folder, renamed over it at the end."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def export_html(notebook, output=None, *, execute: bool = False, timeout: int = 600, overwrite: bool = False) -> Path:
    """Write ``notebook`` (a path) as a self-contained HTML page titled with its name; returns the page's path.

    Args:
        notebook: the ``.ipynb`` file.
        output: where to write (default: the notebook's path with ``.html``); its folder must exist.
        execute: run the notebook first (in its folder), saving widget state as it goes.
        timeout: seconds per cell when executing.
        overwrite: replace ``output`` even when it is not a page this function wrote.

    Raises:
        FileNotFoundError: no notebook there, or the output's folder does not exist.
        ValueError: the notebook is torn or not a notebook, or the output would replace it.
        FileExistsError: ``output`` is someone else's file (pass ``overwrite=True``).
    """
    from nbconvert import HTMLExporter

    source = Path(notebook)
    nb = _read(source)
    target = _target(source, output, overwrite)
    if execute:
        from nbconvert.preprocessors import ExecutePreprocessor

        ExecutePreprocessor(timeout=timeout, store_widget_state=True).preprocess(
            nb, {"metadata": {"path": str(source.resolve().parent)}}
        )
    exporter = HTMLExporter(
        widget_renderer_url=renderer_url(), require_js_url=EMPTY_SCRIPT, mathjax_url=EMPTY_SCRIPT, embed_images=True
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": source.stem}})
    body = body.replace("<head>", f"<head>\n{GENERATOR}", 1)
    write_atomically(target, body)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi3lab.views.widgets.export", description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("-o", "--output", help="the HTML file to write (default: beside the notebook)")
    parser.add_argument("--execute", action="store_true", help="run the notebook first, saving widget state")
    parser.add_argument("--force", action="store_true", help="replace --output even if it is not a page written here")
    args = parser.parse_args(argv)
    try:
        print(export_html(args.notebook, args.output, execute=args.execute, overwrite=args.force))
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a cell failed while executing, or nbconvert broke: one line, not a traceback
        first = (str(exc).strip().splitlines() or [""])[-1][:300]
        print(f"{parser.prog}: error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
