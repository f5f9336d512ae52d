"""Drawing the views: every function takes an optional ``ax`` and returns ``(fig, ax)``.

Nothing here computes anything the tests need: the numbers come from :mod:`phi3lab.attention`,
:mod:`phi3lab.attention_maps`, :mod:`phi3lab.patches` and :mod:`phi3lab.token_view`, whose
plain-text forms are the tested contract.  matplotlib is imported when a function is called.
"""

from __future__ import annotations

import numpy as np
import torch

from phi3lab.patches import CELL, CROP, hd_layout, num_image_tokens
from phi3lab.token_view import SEGMENT_COLOURS, TokenTable

__all__ = ["token_heatmap", "layer_head_grid", "rollout_map", "image_attention", "patch_layout"]


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    return fig, ax


def _label(table: TokenTable, i: int) -> str:
    row = table.rows[i]
    if row.segment == "image":
        return f"img{-row.id}"
    return row.token.replace("▁", "·").replace("<0x0A>", "\\n")


def token_heatmap(weights, table: TokenTable, rows=None, *, ax=None, max_labels: int = 80, title: str | None = None):
    """Query rows × keys heatmap with tick labels coloured by role segment.

    Args:
        weights: ``[rows, K]`` attention (one head or a head average).
        table: the prompt's :class:`~phi3lab.token_view.TokenTable` (labels and colours).
        rows: absolute positions of the rows (default: the last ``len(weights)`` positions).
    """
    w = np.asarray(torch.as_tensor(weights).float())
    k = w.shape[1]
    rows = list(range(k - w.shape[0], k)) if rows is None else [int(r) for r in rows]
    fig, ax = _axes(ax, (min(14, 2 + 0.18 * k), min(10, 1.5 + 0.25 * len(rows))))
    ax.imshow(w, aspect="auto", cmap="viridis", interpolation="nearest")
    step = max(1, k // max_labels)
    xs = list(range(0, k, step))
    ax.set_xticks(xs, [_label(table, i) if i < len(table) else "" for i in xs], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [_label(table, r) if r < len(table) else str(r) for r in rows], fontsize=7)
    for tick, i in zip(ax.get_xticklabels(), xs):
        if i < len(table):
            tick.set_backgroundcolor(SEGMENT_COLOURS[table.rows[i].segment])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    return fig, ax


def layer_head_grid(values, *, ax=None, title: str = "attention share per layer and head", cmap: str = "magma"):
    """A ``[layers, heads]`` matrix (e.g. :func:`phi3lab.attention_maps.head_summary`) as a grid."""
    v = np.asarray(torch.as_tensor(values).float())
    fig, ax = _axes(ax, (1 + 0.4 * v.shape[1], 1 + 0.35 * v.shape[0]))
    image = ax.imshow(v, cmap=cmap, aspect="auto", vmin=0)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(v.shape[1]))
    ax.set_yticks(range(v.shape[0]))
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title)
    return fig, ax


def rollout_map(matrix, table: TokenTable, *, ax=None):
    """The rollout matrix of :func:`phi3lab.attention_maps.rollout`, labelled like a heatmap."""
    return token_heatmap(matrix, table, rows=range(matrix.shape[0]), ax=ax, title="attention rollout")


def image_attention(image, heat, view: str = "crops", *, ax=None, alpha: float = 0.55, title: str | None = None):
    """Overlay an :class:`~phi3lab.attention_maps.ImageHeat` view on the original picture."""
    fig, ax = _axes(ax, (6, 6 * image.height / image.width))
    ax.imshow(image)
    pixels = heat.to_pixels(view)
    ax.imshow(pixels, cmap="inferno", alpha=alpha, extent=(0, image.width, image.height, 0),
              vmin=0, vmax=max(float(pixels.max()), 1e-9), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or f"attention on the image ({'HD crops' if view == 'crops' else 'global view'})")
    return fig, ax


def patch_layout(image, num_crops: int = 16, *, ax=None):
    """The picture with its HD crops and 28-px merged-patch cells drawn on the padded canvas."""
    from matplotlib.patches import Rectangle

    layout = hd_layout(image.width, image.height, num_crops)
    w, h = layout.padded
    fig, ax = _axes(ax, (6, 6 * h / w))
    ax.add_patch(Rectangle((0, 0), w, h, facecolor="white", edgecolor="none"))
    left, top, right, bottom = layout.pad_box
    ax.imshow(image, extent=(left, right, bottom, top))
    for x in range(0, w + 1, CELL):
        ax.axvline(x, color="#94a3b8", lw=0.3)
    for y in range(0, h + 1, CELL):
        ax.axhline(y, color="#94a3b8", lw=0.3)
    rows, cols = layout.grid
    for r in range(rows):
        for c in range(cols):
            ax.add_patch(Rectangle((c * CROP, r * CROP), CROP, CROP, fill=False, edgecolor="#dc2626", lw=2))
            ax.text(c * CROP + 8, r * CROP + 24, f"crop {r * cols + c + 1}", color="#dc2626", fontsize=8)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    tokens = num_image_tokens(image.width, image.height, num_crops)
    ax.set_title(f"{image.width}×{image.height} → {w}×{h} canvas, {rows}×{cols} crops + global view = {tokens} tokens",
                 fontsize=9)
    return fig, ax
