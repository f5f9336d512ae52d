"""Rich displays of the inspection layer's results: a :class:`~phi3lab.inspect.cache.Cache` and an
activation-patching result, as text (``print``) and as HTML (a notebook's output).

The inspection layer draws nothing itself; its objects hand these functions to Jupyter::

    def _repr_html_(self):                 # on Cache
        from phi3lab.views.display import cache_html
        return cache_html(self)

Each form is built from one list of rows (:func:`cache_rows`), with the building blocks of
:mod:`phi3lab.reprs`; every label that came from a prompt is escaped.  The patching grid is coloured
in :mod:`phi3lab.colours`' language: the diverging map centred at 0 (restoring the clean answer is
positive), one symmetric scale drawn with its numbers, and cells under the noise floor left uncoloured
with a dashed outline (no signal).

    >>> import phi3lab
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> _, cache = lab.run_with_cache("What is 2 plus 3?")
    >>> print(cache_text(cache).splitlines()[1])
    prompt     12 tokens
"""

from __future__ import annotations

from collections.abc import Sequence

from phi3lab import colours
from phi3lab.reprs import Markup, grid_html, rows_html, rows_text, shorten

__all__ = ["cache_rows", "cache_text", "cache_html", "patching_text", "patching_html", "human_bytes", "MAX_COLUMNS"]

#: Positions shown in a patching grid's HTML table; past this the columns that matter most are kept.
MAX_COLUMNS = 48


def human_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``.

    >>> human_bytes(3 * 2**20)
    '3.0 MiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _ranges(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def _cache_bytes(cache) -> int | None:
    """Bytes a cache holds: ``cache.nbytes``, else what its attention capture counted."""
    nbytes = getattr(cache, "nbytes", None)
    if nbytes is None and getattr(cache, "capture", None) is not None:
        nbytes = getattr(cache.capture, "bytes", None)
    return None if nbytes is None else int(nbytes)


def cache_rows(cache) -> list[tuple[str, str]]:
    """What a cache holds, row by row: prompt, answer, sites, layers, heads, positions, images, memory."""
    rows = [("prompt", f"{cache.prompt_tokens} tokens")]
    answer = list(cache.answer_ids)
    if answer:
        text = cache.lab.tokenizer.decode(answer, skip_special_tokens=True)
        rows.append(("answer", f"{len(answer)} tokens: {shorten(text, 120)!r}"))
    else:
        rows.append(("answer", "none (one forward pass; the last row predicts the next token)"))
    sites = getattr(cache, "sites", None)
    if sites:
        rows.append(("sites", ", ".join(sites)))
    rows.append(("layers", _ranges(cache.layers)))
    rows.append(("heads", "all" if cache.heads is None else _ranges(cache.heads)))
    try:
        positions = list(cache.positions)
    except (ValueError, KeyError):  # a cache of sites without positions (e.g. image features only)
        positions = []
    if positions:
        rows.append(("positions", f"{len(positions)} rows: {_ranges(positions)}"))
    for im in cache.inputs.images:
        rows.append(
            (
                f"image {im.index + 1}",
                f"{im.width}×{im.height}, num_crops {im.num_crops}, {im.layout.grid[0]}×{im.layout.grid[1]} crops, "
                f"tokens {im.start}..{im.end - 1}",
            )
        )
    nbytes = _cache_bytes(cache)
    rows.append(("memory", "unknown" if nbytes is None else f"{human_bytes(nbytes)} ({nbytes:,} bytes)"))
    return rows


def cache_text(cache) -> str:
    """The cache's rows as aligned text, under a one-line title."""
    return rows_text(cache_rows(cache), title=f"Cache of {cache.lab.spec.name}")


def cache_html(cache) -> str:
    """The cache's rows as an HTML table (escaped, no scripts)."""
    return rows_html(cache_rows(cache), title=f"Cache of {cache.lab.spec.name}")


# --- activation patching ----------------------------------------------------------------------------------


def _values(result):
    """``(values, what, floor)``: the normalized grid when the clean and corrupted runs differ (its noise floor is
    the metric's, :data:`phi3lab.colours.SCORE_FLOOR`, divided by the gap), else the raw metric."""
    try:
        values = result.normalized.detach().float().cpu()
    except ValueError:
        return result.grid.detach().float().cpu(), result.metric, colours.SCORE_FLOOR
    gap = abs(result.clean - result.corrupted)
    return values, "share of the clean answer restored (1: all, 0: none)", colours.SCORE_FLOOR / gap


def _axis(result, dim: str) -> list[str]:
    if dim == "layer":
        return [f"L{i}" for i in result.layers]
    if dim == "head":
        return [f"H{h}" for h in result.heads]
    return [f"{p} {shorten(result.tokens[p], 12)}" for p in result.positions]


def patching_text(result, top: int = 5) -> str:
    """What was patched, the two unpatched scores, the grid's shape and the cells that restore the most."""
    values, what, _ = _values(result)
    shape = " × ".join(f"{d} {s}" for d, s in zip(result.dims, result.grid.shape))
    lines = [
        f"activation patching of {result.site!r}: {shape}",
        f"metric: {result.metric}; clean {result.clean:+.3f}, corrupted {result.corrupted:+.3f}",
        f"cells: {what}",
    ]
    flat = values.reshape(-1)
    for index in flat.argsort(descending=True)[:top].tolist():
        lines.append(f"  {float(flat[index]):+.3f} at {_where(result, values.shape, index)}")
    return "\n".join(lines)


def _where(result, shape, index: int) -> str:
    parts, rest = [], index
    for dim, size in zip(reversed(result.dims), reversed(shape)):
        k, rest = rest % size, rest // size
        if dim == "layer":
            parts.append(f"layer {result.layers[k]}")
        elif dim == "head":
            parts.append(f"head {result.heads[k]}")
        else:
            p = result.positions[k]
            parts.append(f"position {p} {result.tokens[p]!r}")
    return ", ".join(reversed(parts))


def _signed(value: float) -> str:
    """``+0.12``; a value that rounds to zero is shown as ``0.00`` (never ``-0.00``)."""
    return "0.00" if abs(value) < 0.005 else f"{value:+.2f}"


def _cell_style(scale, value: float) -> str:
    """A cell in the colour language: its colour on the scale, or uncoloured with a dashed outline (no signal)."""
    colour = scale.colour(value)
    if colour is None:
        return f"outline:1px dashed {colours.NO_SIGNAL};outline-offset:-2px;text-align:right"
    return f"background:{colour};color:{colours.text_on(colour)};text-align:right"


def patching_html(result, max_columns: int = MAX_COLUMNS) -> str:
    """The grid as a coloured table (layers down; positions or heads across), centred at 0, scale shown.

    A grid with both positions and heads is shown as its best cells (``result.plot()`` draws it all);
    past ``max_columns`` positions, the columns with the largest values are kept and the note says so.
    """
    values, what, floor = _values(result)
    scale = colours.scale(values.numpy(), kind="score", label=what, floor=floor)
    shape = " × ".join(f"{d} {s}" for d, s in zip(result.dims, result.grid.shape))
    title = f"activation patching of {result.site}: {shape}"
    legend = Markup(colours.legend_html(scale))
    summary = rows_html(
        [
            ("metric", result.metric),
            (
                "clean / corrupted",
                f"{result.clean:+.3f} / {result.corrupted:+.3f} (gap {result.clean - result.corrupted:+.3f}; "
                "a small gap makes the shares noisy)",
            ),
            ("cells", what),
            ("colour scale", legend),
        ],
        title=title,
    )
    dims = tuple(result.dims)
    if len(dims) == 1 or (len(dims) == 2 and dims[0] == "layer"):
        grid = values if len(dims) == 2 else values[:, None]
        columns = _axis(result, dims[1]) if len(dims) == 2 else ["all positions"]
        keep = list(range(grid.shape[1]))
        note = None
        if len(keep) > max_columns:
            strongest = grid.abs().amax(0).argsort(descending=True)[:max_columns]
            keep = sorted(strongest.tolist())
            note = (
                f"{max_columns} of {grid.shape[1]} {dims[1]}s shown: those with the largest |value|; plot() draws all"
            )
        rows = [[label] + [_signed(float(grid[i, j])) for j in keep] for i, label in enumerate(_axis(result, "layer"))]
        styles = [[""] + [_cell_style(scale, float(grid[i, j])) for j in keep] for i in range(grid.shape[0])]
        table = grid_html([""] + [columns[j] for j in keep], rows, styles=styles, note=note)
    else:
        flat = values.reshape(-1)
        best = flat.argsort(descending=True)[:12].tolist()
        table = grid_html(
            ["value", "cell"],
            [[f"{float(flat[k]):+.3f}", _where(result, values.shape, k)] for k in best],
            note="a layer × position × head grid: its 12 cells that restore the most; plot() draws it all",
        )
    return Markup(f"{summary}{table}")
