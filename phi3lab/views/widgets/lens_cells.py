"""The patch lens as PatchExplorer draws it: each cell's top token, printed on the picture, fainter when unsure.

:func:`phi3lab.inspect.patch_lens.patch_lens` gives every image token's top next token under the logit lens at
every layer.  The browser gets it packed small (:func:`lens_data`): the *vocabulary* of the pieces that occur,
per layer and cell an index into it (one byte when at most 256 pieces occur, else two, little-endian), and the
probability as one byte (``round(p · 255)``).  Cells run over the crop grid row by row, then over the global
view.  The text of a cell is as opaque as :func:`lens_alpha` says — :data:`LENS_FAINT` for a top token of
probability near 0, solid from :data:`LENS_SURE` — on the picture under a uniform veil (:data:`~phi3lab.colours.VEIL`),
so it reads the same in light and dark themes.

    >>> lens_alpha([0.0, 0.25, 0.9]).round(3).tolist()
    [0.35, 0.675, 1.0]
"""

from __future__ import annotations

import base64
import html
from collections import Counter

import numpy as np

from phi3lab.colours import VEIL, VEIL_ALPHA

__all__ = ["LENS_SURE", "LENS_FAINT", "lens_alpha", "lens_line", "lens_data", "lens_html"]

LENS_SURE = 0.5  # a top token this probable or more is printed solid
LENS_FAINT = 0.35  # the opacity of a top token's text as its probability goes to 0


def lens_alpha(p) -> np.ndarray:
    """The opacity of a lens token's text: :data:`LENS_FAINT` at probability 0, rising linearly to 1 at
    :data:`LENS_SURE` and above (``widgets/patches.js`` draws with the same rule)."""
    p = np.asarray(p, dtype=np.float64)
    return LENS_FAINT + (1 - LENS_FAINT) * np.clip(p / LENS_SURE, 0, 1)


def lens_line(lens, cells: np.ndarray, layer: int) -> str:
    """One line: the most-read pieces of ``cells`` (run indices) at ``layer``, and how many are sure."""
    k = lens.layers.index(layer)
    counts = Counter(lens.pieces[k][i] for i in cells)
    common = ", ".join(f"{p!r} ×{n}" for p, n in counts.most_common(5))
    sure = float((lens.probs[k, cells] >= LENS_SURE).mean())
    return (
        f"patch lens at layer {layer}: each cell's top next token (resid_post → final norm → output head); "
        f"most read {common}; {sure:.0%} of cells at p ≥ {LENS_SURE:g}, the rest fainter"
    )


def lens_data(lens, cells: np.ndarray, held: list[int]) -> dict:
    """The layers ``held`` of ``lens`` over ``cells`` (run indices, in drawing order), packed for the browser.

    Keys: ``layers`` (all the lens reads), ``held``, ``complete`` (every layer held), ``cells`` (per layer),
    ``vocab``, ``width`` (bytes per index), ``index`` and ``probs`` (base64, ``[held, cells]``), ``info``
    (per held layer, :func:`lens_line`) and the drawing constants.
    """
    rows = [lens.layers.index(k) for k in held]
    ids = lens.top_ids[rows][:, cells]
    vocab_ids, index = np.unique(ids, return_inverse=True)
    piece = {}
    for r in rows:
        for i in cells:
            piece.setdefault(int(lens.top_ids[r, i]), lens.pieces[r][i])
    width = 1 if len(vocab_ids) <= 256 else 2
    probs = np.clip(np.rint(lens.probs[rows][:, cells] * 255), 0, 255).astype(np.uint8)
    return {
        "layers": list(lens.layers),
        "held": list(held),
        "complete": len(held) == len(lens.layers),
        "cells": int(len(cells)),
        "vocab": [piece[int(i)] for i in vocab_ids],
        "width": width,
        "index": base64.b64encode(index.reshape(-1).astype("<u1" if width == 1 else "<u2").tobytes()).decode(),
        "probs": base64.b64encode(probs.tobytes()).decode("ascii"),
        "info": {str(k): lens_line(lens, cells, k) for k in held},
        "sure": LENS_SURE,
        "faint": LENS_FAINT,
        "veil": VEIL,
        "veil_alpha": VEIL_ALPHA,
    }


def lens_html(lens, span, grids, layer: int, line: str, veiled: str, side: int = 336) -> str:
    """The lens at ``layer`` without a script: for each ``(name, positions)`` of ``grids`` (absolute positions
    of its cells), the picture (``veiled``: an image URL of it under the veil) on the padded canvas under a
    grid of the cells' top pieces."""
    k = lens.layers.index(layer)
    layout = span.layout
    width, height = layout.padded
    ratio = side / max(width, height)
    w, h = round(width * ratio), round(height * ratio)
    left, top, right, bottom = layout.pad_box
    parts = []
    for name, pos in grids:
        nr, nc = pos.shape
        cells = []
        for i in (pos - span.start).reshape(-1):
            piece, p = lens.pieces[k][int(i)], float(lens.probs[k, int(i)])
            text = piece.replace("<0x0A>", "⏎").removeprefix("▁") or "␣"
            cells.append(
                f'<span title="{html.escape(piece)} p={p:.2f}" style="opacity:{float(lens_alpha(p)):.2f}">'
                f"{html.escape(text[:4])}</span>"
            )
        font = max(6, min(11, int(0.4 * h / nr)))
        parts.append(
            f'<figure style="margin:0 8px 0 0"><div style="position:relative;width:{w}px;height:{h}px;'
            f'background:{VEIL}"><img src="{veiled}" alt="{name}" style="position:absolute;'
            f"left:{left * ratio:.1f}px;top:{top * ratio:.1f}px;width:{(right - left) * ratio:.1f}px;"
            f'height:{(bottom - top) * ratio:.1f}px"><div style="position:absolute;inset:0;display:grid;'
            f"grid-template-columns:repeat({nc},1fr);grid-template-rows:repeat({nr},1fr);color:#ffffff;"
            f"font:{font}px monospace;text-align:center;align-items:center;overflow:hidden;"
            f'text-shadow:0 0 2px {VEIL}">{"".join(cells)}</div></div>'
            f'<figcaption style="font-size:85%">{name}</figcaption></figure>'
        )
    return (
        f'<div style="font-size:90%">{html.escape(line)}</div>'
        f'<div style="display:flex;flex-wrap:wrap">{"".join(parts)}</div>'
        f'<div style="font-size:85%;opacity:0.8">text opacity: the top token\'s probability — '
        f"{LENS_FAINT:g} at p = 0, solid from p = {LENS_SURE:g} (hover a cell for its piece and p)</div>"
    )
