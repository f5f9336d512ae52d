"""Drawing the views: every function takes an optional ``ax`` and returns ``(fig, ax)``.

Nothing here computes anything the tests need: the numbers come from :mod:`phi3lab.inspect.capture`,
:mod:`phi3lab.inspect.maps`, :mod:`phi3lab.prompts.patches` and :mod:`phi3lab.prompts.token_view`, whose
plain-text forms are the tested contract.  matplotlib is imported when a function is called.
"""

from __future__ import annotations

import numpy as np
import torch

from phi3lab.prompts.patches import CELL, CROP, DEFAULT_NUM_CROPS, hd_layout, num_image_tokens
from phi3lab.prompts.token_view import SEGMENT_COLOURS, TokenTable

__all__ = ["token_heatmap", "layer_head_grid", "rollout_map", "image_attention", "patch_layout"]

SHARE = "share of attention"


def _axes(ax, figsize):
    """The caller's axes, or a new figure laid out so colour bars and legends fit."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        fig = ax.figure
    return fig, ax


def _picture_size(width: int, height: int, longest: float = 6.0) -> tuple[float, float]:
    """A figure size in inches with the picture's aspect ratio and its longer side ``longest``."""
    scale = longest / max(width, height)
    return width * scale, height * scale


def _label(table: TokenTable, i: int) -> str:
    row = table.rows[i]
    if row.segment == "image":
        return f"img{-row.id}"
    return row.token.replace("<0x0A>", "\\n")


def token_heatmap(
    weights,
    table: TokenTable,
    rows=None,
    *,
    ax=None,
    max_labels: int = 80,
    title: str | None = None,
    colour_label: str = "attention weight",
):
    """Query rows × keys heatmap with tick labels coloured by role segment.

    Args:
        weights: ``[rows, K]`` attention (one head or a head average).
        table: the prompt's :class:`~phi3lab.prompts.token_view.TokenTable` (labels and colours).
        rows: absolute positions of the rows (default: the last ``len(weights)`` positions).
    """
    w = np.asarray(torch.as_tensor(weights).float())
    k = w.shape[1]
    rows = list(range(k - w.shape[0], k)) if rows is None else [int(r) for r in rows]
    fig, ax = _axes(ax, (min(14, 2 + 0.18 * k), min(10, 1.5 + 0.25 * len(rows))))
    image = ax.imshow(w, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, label=colour_label)
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
    """A ``[layers, heads]`` matrix (e.g. :func:`phi3lab.inspect.maps.head_summary`) as a grid."""
    v = np.asarray(torch.as_tensor(values).float())
    fig, ax = _axes(ax, (1 + 0.4 * v.shape[1], 1 + 0.35 * v.shape[0]))
    image = ax.imshow(v, cmap=cmap, aspect="auto", vmin=0)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(v.shape[1]))
    ax.set_yticks(range(v.shape[0]))
    fig.colorbar(image, ax=ax, fraction=0.046, label=SHARE)
    ax.set_title(title)
    return fig, ax


def rollout_map(matrix, table: TokenTable, *, ax=None):
    """The rollout matrix of :func:`phi3lab.inspect.maps.rollout`, labelled like a heatmap."""
    return token_heatmap(
        matrix,
        table,
        rows=range(matrix.shape[0]),
        ax=ax,
        title="attention rollout",
        colour_label="rolled-out attention",
    )


def image_attention(
    image,
    heat,
    view: str = "crops",
    *,
    ax=None,
    alpha: float = 0.75,
    vmax: float | None = None,
    cmap: str = "magma_r",
    title: str | None = None,
):
    """Overlay an :class:`~phi3lab.inspect.maps.ImageHeat` view on the original picture.

    The picture keeps its colours; the heat is drawn on top, transparent where a cell has no
    attention and up to ``alpha`` opaque at ``vmax`` (default: the strongest cell), with a colour
    bar of each cell's share of the attention row.  Pass the same ``vmax`` to compare two views.
    """
    fig, ax = _axes(ax, _picture_size(1.25 * image.width, image.height))  # a quarter more for the colour bar
    pixels = heat.to_pixels(view)
    # no attention: transparent, so the picture shows through
    _overlay(
        fig,
        ax,
        image,
        pixels,
        cmap,
        np.linspace(0, alpha, 256),
        0,
        vmax or max(float(pixels.max()), 1e-9),
        f"{SHARE} per cell",
    )
    ax.set_title(title or f"attention on the image ({'HD crops' if view == 'crops' else 'global view'})")
    return fig, ax


def _overlay(fig, ax, picture, values, cmap: str, alphas: np.ndarray, vmin: float, vmax: float, label: str):
    """The picture in its own colours with ``values`` (picture-sized) on top, each colour of ``cmap``
    as opaque as ``alphas`` says (256 steps), and a labelled colour bar; no ticks, but the frame
    stays, so a white picture's edge shows."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    ramp = colormaps[cmap](np.linspace(0, 1, 256))
    ramp[:, 3] = alphas
    extent = (0, picture.width, picture.height, 0)
    ax.imshow(picture, extent=extent)
    shown = ax.imshow(values, cmap=ListedColormap(ramp), extent=extent, interpolation="nearest", vmin=vmin, vmax=vmax)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label=label)
    ax.set_xticks([])
    ax.set_yticks([])


def patch_layout(image, num_crops: int = DEFAULT_NUM_CROPS, *, ax=None):
    """The picture as the HD transform lays it out: resized into its box on the padded canvas,
    the white padding hatched, with the 336-px crops (red) and the 28-px merged-patch cells, one
    image token each (grey)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    layout = hd_layout(image.width, image.height, num_crops)
    w, h = layout.padded
    left, top, right, bottom = layout.pad_box
    fig, ax = _axes(ax, _picture_size(w, h))
    padding = dict(facecolor="white", edgecolor="#cbd5e1", hatch="//")
    ax.add_patch(Rectangle((0, 0), w, h, lw=0, zorder=0, **padding))
    ax.imshow(image, extent=(left, right, bottom, top), zorder=1)
    for x in range(0, w + 1, CELL):
        ax.axvline(x, color="#94a3b8", lw=0.3, zorder=2)
    for y in range(0, h + 1, CELL):
        ax.axhline(y, color="#94a3b8", lw=0.3, zorder=2)
    ax.add_patch(
        Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="#2563eb", lw=1.5, ls="--", zorder=3)
    )
    rows, cols = layout.grid
    for r in range(rows):
        for c in range(cols):
            ax.add_patch(Rectangle((c * CROP, r * CROP), CROP, CROP, fill=False, edgecolor="#dc2626", lw=2, zorder=4))
            ax.text(
                c * CROP + 8,
                r * CROP + 8,
                f"crop {r * cols + c + 1}",
                color="#dc2626",
                fontsize=8,
                va="top",
                zorder=5,
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1),
            )
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks(range(0, w + 1, CROP))
    ax.set_yticks(range(0, h + 1, CROP))
    box = f"the picture, resized to {right - left}×{bottom - top}"
    handles = [
        Line2D([], [], color="#2563eb", lw=1.5, ls="--", label=box),
        Line2D([], [], color="#dc2626", lw=2, label=f"{CROP}×{CROP} crop"),
        Line2D([], [], color="#94a3b8", lw=1, label=f"{CELL}×{CELL} cell = 1 image token"),
    ]
    if (right - left, bottom - top) != (w, h):
        handles.insert(1, Patch(label="white padding", **padding))
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.06),
        ncol=2 if w >= h else 1,
        fontsize=8,
        frameon=False,
    )
    tokens = num_image_tokens(image.width, image.height, num_crops)
    ax.set_title(
        f"{image.width}×{image.height} on a {w}×{h} canvas\n{rows}×{cols} crops + global view = {tokens} tokens",
        fontsize=9,
    )
    return fig, ax


# --- attributions (phi3lab.attribution) --------------------------------------------------------

ATTRIBUTION = "attribution (Δ log p)"


def _symmetric(values) -> float:
    return max(float(np.abs(np.asarray(values)).max()) if np.size(values) else 0.0, 1e-9)


def attribution_text(attr, token=None, *, ax=None, fontsize: float = 9, cmap: str = "RdBu_r"):
    """An :class:`~phi3lab.attribution.Attribution` as text heat: the prompt turn by turn, each
    unit's text on the colour of its score (red supports the target, blue works against it)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    values = attr.row(token).numpy()
    norm, colours = Normalize(-_symmetric(values), _symmetric(values)), colormaps[cmap]
    fig, ax = _axes(ax, (9, 3))
    ax.set_axis_off()
    fig.colorbar(ScalarMappable(norm, colours), ax=ax, fraction=0.03, pad=0.01, label=ATTRIBUTION)
    width_pt = ax.get_window_extent().width * 72 / fig.dpi  # after the colour bar took its share
    columns = max(20, int(width_pt / (0.61 * fontsize)))  # monospace characters per line
    y = 0.0
    for role, pieces in attr.segments():
        ax.text(0, y, f"{role}:", family="monospace", fontsize=fontsize, color="#6b7280", va="top")
        x, space = len(role) + 2, False
        for text, i in pieces:
            space = space or text[:1].isspace()
            text = " ".join(text.split())
            if not text:
                continue
            x += space
            if x + len(text) > columns:
                x, y = len(role) + 2, y + 1
            space = False
            if i is not None:
                face = colours(norm(values[i]))
            else:
                face = SEGMENT_COLOURS["image"] if text.startswith("[image") else "none"
            dark = i is not None and abs(norm(values[i]) - 0.5) > 0.35
            ax.text(
                x,
                y,
                text,
                family="monospace",
                fontsize=fontsize,
                va="top",
                color="white" if dark else "black",
                bbox=dict(facecolor=face, edgecolor="none", pad=1.5),
            )
            x += len(text) + 0.3
        y += 1.5
    ax.set_xlim(0, columns)
    ax.set_ylim(max(y, 6), -0.5)
    ax.set_title(
        f"{attr.method} over {' + '.join(attr.kinds)}: {attr.token_name(token)} of {attr.target_text!r}", fontsize=9
    )
    return fig, ax


def attribution_heatmap(attr, *, ax=None, cmap: str = "RdBu_r"):
    """Target tokens × units scores of an :class:`~phi3lab.attribution.Attribution`, centred at 0."""
    scores = attr.scores.numpy()
    fig, ax = _axes(ax, (min(14, 2 + 0.35 * scores.shape[1]), 1.5 + 0.3 * scores.shape[0]))
    scale = _symmetric(scores)
    image = ax.imshow(scores, cmap=cmap, vmin=-scale, vmax=scale, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(attr.units)), [u.label for u in attr.units], rotation=90, fontsize=7)
    ax.set_yticks(range(len(attr.target_tokens)), attr.target_tokens, fontsize=7)
    ax.set_xlabel("unit")
    ax.set_ylabel("target token")
    fig.colorbar(image, ax=ax, fraction=0.046, label=ATTRIBUTION)
    ax.set_title(f"{attr.method}: target token × unit")
    return fig, ax


def attribution_image(
    attr, image: int = 0, token=None, *, ax=None, alpha: float = 0.55, cmap: str = "RdBu_r", title: str | None = None
):
    """A picture under its :meth:`~phi3lab.attribution.Attribution.image_map`: clear where a unit
    scores 0, up to ``alpha`` opaque at the largest |score|, with a colour bar."""
    picture = attr.inputs.image(image).image
    heat = attr.image_map(image, token)
    scale = _symmetric(heat)
    fig, ax = _axes(ax, (5, 5 * picture.height / picture.width))
    # 0 in the middle of the diverging scale: the picture shows through
    _overlay(fig, ax, picture, heat, cmap, np.abs(np.linspace(-alpha, alpha, 256)), -scale, scale, ATTRIBUTION)
    ax.set_title(title or f"{attr.method} on image {image + 1} ({' + '.join(attr.kinds)})", fontsize=9)
    return fig, ax


def faithfulness_curves(curves, *, ax=None, title: str | None = None):
    """Deletion or insertion :class:`~phi3lab.attribution.Curve` s on one axes, areas in the legend."""
    fig, ax = _axes(ax, (6, 3.5))
    for curve in curves:
        style = dict(color="#9ca3af", ls="--") if curve.method == "random" else {}
        ax.plot(curve.fractions, curve.log_probs, marker=".", label=f"{curve.method} (area {curve.area:.2f})", **style)
    kinds = {c.kind for c in curves}
    ax.set_xlabel(
        "share of units "
        + ("removed" if kinds == {"deletion"} else "inserted" if kinds == {"insertion"} else "removed / inserted")
    )
    ax.set_ylabel("log p(target)")
    ax.legend(fontsize=8)
    ax.set_title(title or f"{' and '.join(sorted(kinds))} curves", fontsize=9)
    return fig, ax


__all__ += ["attribution_text", "attribution_heatmap", "attribution_image", "faithfulness_curves"]
