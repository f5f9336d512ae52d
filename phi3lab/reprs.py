"""How phi3lab's objects show themselves: a text form for ``print`` and an HTML form for notebooks.

Every result object has ``to_text()`` (what ``print`` shows, and the tested contract) and
``_repr_html_()`` (what Jupyter shows), both built from the same rows with the helpers here, so the two
forms never disagree.  The HTML escapes every value — prompts, answers and file names are user text —
has no scripts and loads nothing, and takes its chrome from :data:`PALETTE`, the one place to change it:
JupyterLab's theme variables first (so tables follow light and dark themes), neutral greys where those are
absent (GitHub, an exported page).  Numbers shown in colour use :mod:`phi3lab.colours`.

    >>> print(rows_text([("model", "phi3lab-tiny"), ("dtype", "float32")]))
    model  phi3lab-tiny
    dtype  float32
    >>> rows_html([("prompt", "<|user|>")], title="Inputs").count("&lt;|user|&gt;")
    1

This module sits in the foundation layer (it imports nothing from phi3lab), so the objects of every
layer can use it; :mod:`phi3lab.views.display` builds the forms of the inspection layer's objects on it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

__all__ = [
    "PALETTE",
    "Markup",
    "escape",
    "shorten",
    "rows_text",
    "rows_html",
    "grid_text",
    "grid_html",
    "pre_html",
]

#: Chrome of the rich displays (text, borders, header shading), in one place: JupyterLab's theme variables
#: with neutral fallbacks.  Numbers are coloured by :mod:`phi3lab.colours` (the colour language), never here.
PALETTE = {
    "text": "var(--jp-ui-font-color1, inherit)",
    "muted": "var(--jp-ui-font-color2, #6b7280)",
    "border": "var(--jp-border-color2, #d0d7de)",
    "header": "var(--jp-layout-color2, rgba(127, 127, 127, 0.1))",
    "mono": "var(--jp-code-font-family, ui-monospace, SFMono-Regular, Menlo, Consolas, monospace)",
}


class Markup(str):
    """HTML that is already safe (built by these helpers): passed through without escaping."""


def escape(value) -> str:
    """``value`` as HTML text: escaped, unless it is :class:`Markup`."""
    return value if isinstance(value, Markup) else html.escape(str(value), quote=True)


def shorten(text: str, limit: int = 80) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis.

    >>> shorten("a\\nb " * 40, 10)
    'a⏎b a⏎b a…'
    """
    one_line = str(text).replace("\r\n", "⏎").replace("\n", "⏎")
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def rows_text(rows: Iterable[tuple[str, object]], *, title: str | None = None) -> str:
    """Aligned ``key  value`` lines (multi-line values indented under their first line)."""
    rows = [(str(k), str(v)) for k, v in rows]
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title] if title else []
    for key, value in rows:
        first, *rest = value.split("\n") or [""]
        lines.append(f"{key:<{width}}  {first}".rstrip())
        lines += [f"{'':<{width}}  {line}".rstrip() for line in rest]
    return "\n".join(lines)


def _frame(title, body: str, note) -> Markup:
    head = f'<div style="font-weight:600;margin:0 0 2px">{escape(title)}</div>' if title else ""
    foot = f'<div style="color:{PALETTE["muted"]};font-size:90%;margin-top:2px">{escape(note)}</div>' if note else ""
    return Markup(f'<div class="phi3lab-repr" style="color:{PALETTE["text"]};margin:2px 0">{head}{body}{foot}</div>')


_CELL = "padding:1px 8px;border-bottom:1px solid {border};text-align:left;vertical-align:top"


def rows_html(rows: Iterable[tuple[str, object]], *, title=None, note=None) -> Markup:
    """A two-column table of ``(key, value)`` rows; values escaped (unless :class:`Markup`), newlines kept."""
    cell = _CELL.format(border=PALETTE["border"])
    body = "".join(
        f'<tr><th style="{cell};font-weight:normal;color:{PALETTE["muted"]};white-space:nowrap">{escape(k)}</th>'
        f'<td style="{cell};white-space:pre-wrap">{escape(v)}</td></tr>'
        for k, v in rows
    )
    return _frame(title, f'<table style="border-collapse:collapse;margin:0">{body}</table>', note)


def grid_text(head: Sequence[str], rows: Iterable[Sequence[object]], *, title: str | None = None) -> str:
    """Columns padded to their widest cell (numbers right-aligned)."""
    table = [[str(h) for h in head]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    numeric = [all(_is_number(r[i]) for r in table[1:]) and len(table) > 1 for i in range(len(head))]
    lines = [title] if title else []
    for row in table:
        cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%"))
    except ValueError:
        return False
    return True


def grid_html(
    head: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    title=None,
    note=None,
    styles: Iterable[Sequence[str]] | None = None,
) -> Markup:
    """A table with a header row; ``styles`` (one CSS string per cell, optional) colours cells."""
    cell = _CELL.format(border=PALETTE["border"])
    header = "".join(f'<th style="{cell};background:{PALETTE["header"]}">{escape(h)}</th>' for h in head)
    rows = list(rows)
    styles = list(styles) if styles is not None else [[""] * len(r) for r in rows]
    body = "".join(
        "<tr>" + "".join(f'<td style="{cell};{s}">{escape(c)}</td>' for c, s in zip(row, style)) + "</tr>"
        for row, style in zip(rows, styles)
    )
    return _frame(title, f'<table style="border-collapse:collapse;margin:0"><tr>{header}</tr>{body}</table>', note)


def pre_html(text: str, *, title=None, note=None) -> Markup:
    """The text form in a ``<pre>`` block (for reports whose text form is already a laid-out table)."""
    style = f"font-family:{PALETTE['mono']};margin:0;white-space:pre;overflow-x:auto"
    return _frame(title, f'<pre style="{style}">{escape(text)}</pre>', note)
