"""Drawing the views: every function takes an optional ``ax`` and returns ``(fig, ax)``.

Nothing here computes anything the tests need: the numbers come from :mod:`phi3lab.inspect.capture`,
:mod:`phi3lab.inspect.maps`, :mod:`phi3lab.prompts.patches` and :mod:`phi3lab.prompts.token_view`, whose
plain-text forms are the tested contract.  matplotlib is imported when a function is called.

Every figure speaks :mod:`phi3lab.colours`: shares on the sequential map from 0, signed scores on the
diverging map centred at 0, one scale per figure drawn as a colour bar with its numbers, values under the
noise floor left blank ("no signal"), and pictures in their own colours under a veil rather than a tint.
"""

from __future__ import annotations

import numpy as np
import torch

from phi3lab.colours import NO_SIGNAL, VEIL, VEIL_ALPHA, Scale, colormap, scale, text_on, tick, veil_alpha
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


def _colour_bar(fig, ax, s: Scale, label: str | None = None, cmap=None):
    """A colour bar with the scale's numbers; its label names the unit and the noise floor."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    top = s.vmax if s.signal else max(s.floor, 1e-12)
    norm = Normalize(0 if s.kind == "share" else -top, top)
    from matplotlib.ticker import FuncFormatter

    bar = fig.colorbar(ScalarMappable(norm, cmap or colormap(s.kind)), ax=ax, fraction=0.046, pad=0.02)
    bar.set_ticks(s.ticks() if s.signal else [])
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: tick(x, s.kind)))
    blank = "fully veiled" if cmap is not None else "blank"
    floor = f"{blank}: under {s.floor:.0e}, no signal" if s.signal else f"no signal: all under {s.floor:.0e}"
    bar.set_label(f"{label or s.label}\n({floor})", fontsize=8)
    if not s.signal:
        bar.solids.set_alpha(0.25)
    return bar


def _masked(values, s: Scale):
    """``values`` with *no signal* (under the floor, not finite, or a share of 0) masked: drawn as background."""
    v = np.asarray(values, dtype=np.float64)
    return np.ma.masked_array(v, mask=np.isnan(s.fraction(v)))


def _norm_args(s: Scale) -> dict:
    top = s.vmax if s.signal else max(s.floor, 1e-12)
    return {"vmin": 0 if s.kind == "share" else -top, "vmax": top}


def token_heatmap(
    weights,
    table: TokenTable,
    rows=None,
    *,
    ax=None,
    max_labels: int = 80,
    title: str | None = None,
    colour_label: str = SHARE,
    vmax: float | None = None,
):
    """Query rows × keys heatmap (shares of attention) with tick labels coloured by role segment.

    Args:
        weights: ``[rows, K]`` attention (one head or a head average).
        table: the prompt's :class:`~phi3lab.prompts.token_view.TokenTable` (labels and colours).
        rows: absolute positions of the rows (default: the last ``len(weights)`` positions).
        vmax: a fixed top of the scale (to compare figures); default the largest value.
    """
    w = np.asarray(torch.as_tensor(weights).float())
    k = w.shape[1]
    rows = list(range(k - w.shape[0], k)) if rows is None else [int(r) for r in rows]
    fig, ax = _axes(ax, (min(14, 2 + 0.18 * k), min(10, 1.5 + 0.25 * len(rows))))
    s = scale(w, kind="share", label=colour_label, vmax=vmax)
    ax.imshow(_masked(w, s), aspect="auto", cmap=colormap("share"), interpolation="nearest", **_norm_args(s))
    _colour_bar(fig, ax, s)
    step = max(1, k // max_labels)
    xs = list(range(0, k, step))
    ax.set_xticks(xs, [_label(table, i) if i < len(table) else "" for i in xs], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [_label(table, r) if r < len(table) else str(r) for r in rows], fontsize=7)
    for label, i in zip(ax.get_xticklabels(), xs):
        if i < len(table):
            label.set_backgroundcolor(SEGMENT_COLOURS[table.rows[i].segment])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    return fig, ax


def layer_head_grid(values, *, ax=None, title: str = "attention share per layer and head", vmax: float | None = None):
    """A ``[layers, heads]`` matrix of shares (e.g. :func:`phi3lab.inspect.maps.head_summary`) as a grid."""
    v = np.asarray(torch.as_tensor(values).float())
    fig, ax = _axes(ax, (1 + 0.4 * v.shape[1], 1 + 0.35 * v.shape[0]))
    s = scale(v, kind="share", label=SHARE, vmax=vmax)
    ax.imshow(_masked(v, s), cmap=colormap("share"), aspect="auto", interpolation="nearest", **_norm_args(s))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(v.shape[1]))
    ax.set_yticks(range(v.shape[0]))
    _colour_bar(fig, ax, s)
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
    vmax: float | None = None,
    title: str | None = None,
):
    """An :class:`~phi3lab.inspect.maps.ImageHeat` view over the original picture, which keeps its colours.

    Where a cell gets little or no attention a neutral veil covers the picture; the veil lifts as the
    cell's share rises and is gone at ``vmax`` (default: the strongest cell of *both* views, crops and
    global, so the two figures of one picture share a scale).  Nothing is tinted, so an orange square
    stays orange.  The colour bar maps the veil to the numbers.  The heat's attention sinks are outlined dotted
    grey, masked or shown (the legend says which); one question's *candidates* (``heat.candidates``: tokens the
    answer looks at hard, perhaps the asked-about object) are neither masked nor outlined.
    """
    fig, ax = _axes(ax, _picture_size(1.25 * image.width, image.height))  # a quarter more for the colour bar
    s = scale(heat.crops, heat.global_view, kind="share", label=f"{SHARE} per cell", vmax=vmax)
    _veiled(fig, ax, image, heat.to_pixels(view), s)
    _outline_sinks(ax, heat, view)
    ax.set_title(title or f"attention on the image ({'HD crops' if view == 'crops' else 'global view'})")
    return fig, ax


SINK_OUTLINE = "#6b7280"  # grey: a sink is a property of the model, not a value on the scale


def _outline_sinks(ax, heat, view: str) -> None:
    """Dotted grey outlines on the attention sinks' cells of ``view`` (masked ones say so in the legend);
    candidates are not sinks and get none."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from phi3lab.prompts.patches import image_tokens

    sinks = getattr(heat, "sinks", ())
    if not sinks:
        return
    kind = "crop" if view == "crops" else "global"
    tokens = image_tokens(heat.width, heat.height, heat.num_crops)
    drawn = 0
    for i in sinks:
        t = tokens[i]
        if t.kind != kind or t.image_box is None:
            continue
        x0, y0, x1, y1 = t.image_box
        # a white stroke under the dotted grey, so the outline reads on the veil as on the bare picture
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.5, edgecolor="white", alpha=0.9))
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ls=":", edgecolor=SINK_OUTLINE))
        drawn += 1
    if drawn:
        what = "masked" if heat.masked else "shown"
        handle = Line2D([], [], color=SINK_OUTLINE, ls=":", lw=1.5)
        ax.legend(
            [handle],
            [f"attention sink ({what}, {drawn} cell{'s' if drawn > 1 else ''})"],
            loc="lower left",
            fontsize=7,
            framealpha=0.8,
        )


def _veil_cmap():
    """Veil over white, from fully veiled (little) to clear (the top): the colour bar of an overlay."""
    from matplotlib.colors import LinearSegmentedColormap

    veiled = tuple(VEIL_ALPHA * c + (1 - VEIL_ALPHA) for c in _unit_rgb(VEIL))
    return LinearSegmentedColormap.from_list("phi3lab_veil", [veiled, (1, 1, 1)], N=256)


def _unit_rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))


def _veiled(fig, ax, picture, values: np.ndarray, s: Scale, rims=()):
    """The picture in its own colours under a veil that lifts as |value| rises (one image, no seams), the
    ``rims`` — ``(box, colour, |fraction of the scale|)`` — outlined, and a colour bar; no ticks, but the frame stays."""
    from matplotlib.patches import Rectangle

    alpha = veil_alpha(s.fraction(values))
    veil = np.zeros(alpha.shape + (4,))
    veil[..., :3] = _unit_rgb(VEIL)
    veil[..., 3] = alpha
    extent = (0, picture.width, picture.height, 0)
    ax.imshow(picture, extent=extent)
    ax.imshow(veil, extent=extent, interpolation="nearest")
    inset = 0.012 * max(picture.width, picture.height)
    for (x0, y0, x1, y1), colour, strength in rims:  # faint values, faint rims: a rim says the sign
        ax.add_patch(
            Rectangle(
                (x0 + inset / 2, y0 + inset / 2),
                x1 - x0 - inset,
                y1 - y0 - inset,
                fill=False,
                lw=2,
                edgecolor=colour,
                alpha=float(np.clip(np.sqrt(strength), 0.35, 1)),
            )
        )
    if s.kind == "share":
        _colour_bar(fig, ax, s, f"{s.label}\n(clear = most; veiled = little)", _veil_cmap())
    else:
        _colour_bar(fig, ax, s, f"{s.label}\n(rim: sign; clear = strongest)")
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


def attribution_scale(attr, token=None, floor: float | None = None, vmax: float | None = None) -> Scale:
    """The one diverging scale of an attribution's view for ``token``: every unit's score (words, turns and
    image regions alike), with the attribution's ``noise_floor`` if it has one."""
    if floor is None:
        floor = getattr(attr, "noise_floor", None)
    return scale(attr.row(token).numpy(), kind="score", label=ATTRIBUTION, floor=floor, vmax=vmax)


def attribution_text(
    attr, token=None, *, ax=None, fontsize: float = 9, floor: float | None = None, vmax: float | None = None
):
    """An :class:`~phi3lab.attribution.Attribution` as text heat: the prompt turn by turn, each unit's text
    on the colour of its score (red supports the target, blue works against it; dashed outline: no signal).

    The scale is the one of :func:`attribution_scale` — shared with :func:`attribution_image` — and drawn.
    Pass the same ``vmax`` to the figures of two attributions (say ablation's ±0.04 and Shapley's ±5) to
    draw them on one scale, so that equal colours mean equal scores."""
    values = attr.row(token).numpy()
    s = attribution_scale(attr, token, floor, vmax)
    colours = s.colours(values)
    fig, ax = _axes(ax, (9, 3))
    ax.set_axis_off()
    _colour_bar(fig, ax, s)
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
            if i is not None and colours[i] is not None:
                box = dict(facecolor=colours[i], edgecolor="none", pad=1.5)
                ink = text_on(colours[i])
            elif i is not None:  # a unit under the noise floor: no colour, a dashed outline
                box = dict(facecolor="none", edgecolor=NO_SIGNAL, linestyle="--", pad=1.5)
                ink = "#6b7280"
            else:
                face = SEGMENT_COLOURS["image"] if text.startswith("[image") else "none"
                box, ink = dict(facecolor=face, edgecolor="none", pad=1.5), "black"
            ax.text(x, y, text, family="monospace", fontsize=fontsize, va="top", color=ink, bbox=box)
            x += len(text) + 0.3
        y += 1.5
    ax.set_xlim(0, columns)
    ax.set_ylim(max(y, 6), -0.5)
    heading = f"{attr.method} over {' + '.join(attr.kinds)}: {attr.token_name(token)} of {attr.target_text!r}"
    ax.set_title(heading if s.signal else f"{heading}\nno signal: every |score| is under {s.floor:.0e}", fontsize=9)
    return fig, ax


def attribution_heatmap(attr, *, ax=None, floor: float | None = None, vmax: float | None = None):
    """Target tokens × units scores of an :class:`~phi3lab.attribution.Attribution`, on one scale centred at 0
    (``±vmax``: a fixed scale, to compare figures side by side; default the largest |score|)."""
    scores = attr.scores.numpy()
    fig, ax = _axes(ax, (min(14, 2 + 0.35 * scores.shape[1]), 1.5 + 0.3 * scores.shape[0]))
    if floor is None:
        floor = getattr(attr, "noise_floor", None)
    s = scale(scores, kind="score", label=ATTRIBUTION, floor=floor, vmax=vmax)
    ax.imshow(_masked(scores, s), cmap=colormap("score"), aspect="auto", interpolation="nearest", **_norm_args(s))
    ax.set_xticks(range(len(attr.units)), [u.label for u in attr.units], rotation=90, fontsize=7)
    ax.set_yticks(range(len(attr.target_tokens)), attr.target_tokens, fontsize=7)
    ax.set_xlabel("unit")
    ax.set_ylabel("target token")
    _colour_bar(fig, ax, s)
    ax.set_title(f"{attr.method}: target token × unit")
    return fig, ax


def attribution_image(
    attr, image: int = 0, token=None, *, ax=None, floor: float | None = None, title=None, vmax: float | None = None
):
    """A picture under its :meth:`~phi3lab.attribution.Attribution.image_map`, in its own colours: veiled
    where its units have no or little signal, clear at the strongest, each unit with signal outlined in its
    score's colour.  The scale is the whole attribution's (:func:`attribution_scale`), so a region scoring
    +1 beside a word at +23.5 stays nearly veiled; ``vmax`` fixes it to compare figures side by side."""
    picture = attr.inputs.image(image).image
    s = attribution_scale(attr, token, floor, vmax)
    values = attr.row(token).numpy()
    rims = [
        (unit.box, tuple(rgb / 255), abs(fraction))
        for unit, rgb, fraction in zip(attr.units, s.rims(values), s.fraction(values))
        if unit.image == image and unit.box is not None and not np.isnan(rgb).any()
    ]
    fig, ax = _axes(ax, (5, 5 * picture.height / picture.width))
    _veiled(fig, ax, picture, attr.image_map(image, token), s, rims)
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


__all__ += ["attribution_scale", "attribution_text", "attribution_heatmap", "attribution_image", "faithfulness_curves"]


# --- where it looks versus what it uses ------------------------------------------------------------------


def _region_rims(regions, values, s: Scale):
    return [
        (region.image_box, tuple(rgb / 255), abs(fraction))
        for region, rgb, fraction in zip(regions, s.rims(values), s.fraction(values))
        if not np.isnan(rgb).any()
    ]


def causal_image(picture, causal, *, ax=None, title: str | None = None):
    """A :class:`~phi3lab.inspect.causal.CausalMap` over its picture: veiled where removing a region changes
    nothing, clear where the answer needs it, each region with signal outlined in its sign's colour
    (red: the answer needs it; blue: the answer is surer without it).  Diverging scale centred at 0."""
    s = scale(causal.drops, kind="score", label="log p(answer) drop when removed")
    fig, ax = _axes(ax, (5, 5 * picture.height / picture.width))
    _veiled(fig, ax, picture, causal.to_pixels(), s, _region_rims(causal.regions, causal.drops, s))
    ax.set_title(title or f"causal map ({causal.baseline} baseline, {len(causal.regions)} regions)", fontsize=9)
    return fig, ax


def map_comparison(picture, comparison, *, axes=None):
    """Attention, attribution and the causal drop on the same regions, then the deletion and insertion curves:
    one figure, each map on its own scale (shares sequential, signed scores diverging around 0), each with
    its rank correlation to the causal map in its title; ``axes``: one per map and two for the curves."""
    import matplotlib.pyplot as plt

    names = list(comparison.maps)
    if axes is None:
        fig, axes = plt.subplots(1, len(names) + 2, figsize=(4.2 * (len(names) + 2), 4.0), layout="constrained")
    else:
        if len(axes) != len(names) + 2:
            raise ValueError(f"map_comparison draws {len(names)} maps and 2 curve panels: pass {len(names) + 2} axes")
        fig = axes[0].figure
    regions = comparison.causal.regions
    for ax, name in zip(axes, names):
        values = comparison.maps[name]
        kind = "share" if name == "attention" else "score"
        label = {
            "attention": f"{SHARE} on the region",
            "attribution": "attribution score",
            "causal": "log p drop when removed",
        }[name]
        s = scale(values, kind=kind, label=label)
        pixels = np.zeros((picture.height, picture.width))
        for region, value in zip(regions, values):
            x0, y0, x1, y1 = (int(round(v)) for v in region.image_box)
            pixels[y0:y1, x0:x1] = value
        rims = _region_rims(regions, values, s) if kind == "score" else ()
        _veiled(fig, ax, picture, pixels, s, rims)
        rho = comparison.correlations.get((name, "causal"), comparison.correlations.get(("causal", name)))
        extra = f"\nrank corr. with causal {rho:+.2f}" if rho is not None and name != "causal" else ""
        ax.set_title(f"{name}{extra}", fontsize=9)
    steps = np.arange(len(regions) + 1) / max(len(regions), 1)
    panels = [
        (comparison.deletion, "removed", "deletion (lower: the order found what is needed)"),
        (comparison.insertion, "put back", "insertion (higher: the order found what is needed)"),
    ]
    for curve_ax, (curves, verb, title) in zip(axes[len(names) :], panels):
        for name, values in curves.items():
            style = dict(color="#9ca3af", ls="--") if name == "random" else {}
            curve_ax.plot(steps, values, marker=".", label=f"{name} (mean {values.mean():.2f})", **style)
        curve_ax.set_xlabel(f"share of regions {verb}, in each map's order")
        curve_ax.set_ylabel("log p(answer)")
        curve_ax.set_title(title, fontsize=9)
        curve_ax.legend(fontsize=7)
    return fig, axes


__all__ += ["causal_image", "map_comparison"]


def patch_lens_image(picture, lens, layer: int = -1, view: str = "crops", *, ax=None, words=(), title=None):
    """A :class:`~phi3lab.inspect.patch_lens.PatchLens` layer over its picture: each cell of ``view`` filled on
    the sequential scale by its top token's probability (colour bar 0–1) with the token written in it; the
    cells whose token spells one of ``words`` (:func:`~phi3lab.inspect.patch_lens.spelling`) outlined black.
    ``words`` holds words, or ``(word, box)`` pairs as :func:`~phi3lab.inspect.patch_lens.word_reads` takes
    them, whose boxes are drawn dashed."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from phi3lab.inspect.patch_lens import spelling

    k = lens.layers.index(lens.layers[layer] if layer < 0 else layer)
    kind = "crop" if view == "crops" else "global" if view == "global" else None
    if kind is None:
        raise ValueError(f"view must be 'crops' or 'global', got {view!r}")
    s = scale([1.0], kind="share", label="probability of the cell's top token", vmax=1.0)
    fig, ax = _axes(ax, _picture_size(1.25 * picture.width, picture.height, longest=8.0))
    ax.imshow(picture, extent=(0, picture.width, picture.height, 0))
    pairs = [(w, None) if isinstance(w, str) else tuple(w) for w in words]
    wanted = {w.lower() for w, _ in pairs}
    cells = [t for t in lens.tokens if t.kind == kind and t.image_box is not None]
    size = min(t.image_box[2] - t.image_box[0] for t in cells) if cells else 1
    points = 72 * ax.figure.get_size_inches()[0] * 0.8 / picture.width  # points per picture pixel, roughly
    fontsize = max(4.0, min(8.0, 0.3 * size * points))
    read = 0
    for t in cells:
        x0, y0, x1, y1 = t.image_box
        p = float(lens.probs[k, t.index])
        colour = s.colour(p) or "#ffffff"
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=colour, alpha=0.75, lw=0))
        piece = lens.pieces[k][t.index]
        shown = piece.replace("▁", "")[:6] or "␣"
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, shown, ha="center", va="center", fontsize=fontsize, color=text_on(colour))
        if wanted and spelling(piece) in wanted:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.8, edgecolor="black"))
            read += 1
    for _, box in pairs:
        if box is not None:
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2, ls="--", edgecolor="#1f2937"))
    _colour_bar(fig, ax, s)
    handles, labels = [], []
    if wanted:
        handles.append(Line2D([], [], color="black", lw=1.8))
        labels.append(f"reads a written word ({read} cell{'s' if read != 1 else ''})")
    if any(box is not None for _, box in pairs):
        handles.append(Line2D([], [], color="#1f2937", lw=1.2, ls="--"))
        labels.append("where a word is written")
    if handles:
        ax.legend(handles, labels, loc="lower left", fontsize=7, framealpha=0.8)
    ax.set_xlim(0, picture.width)
    ax.set_ylim(picture.height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    where = "HD crops" if view == "crops" else "global view"
    ax.set_title(title or f"patch lens, layer {lens.layers[k]} ({where}): each cell's top token", fontsize=9)
    return fig, ax


def word_reads(reads, *, ax=None, title: str | None = None):
    """A :class:`~phi3lab.inspect.patch_lens.WordReads` per layer: the share of cells covering a word that read
    it, the share of words read by at least one of their cells, and the two controls (the same cells of a blank
    picture; the picture's cells away from the word)."""
    fig, ax = _axes(ax, (6, 3.4))
    layers = list(reads.layers)
    lines = [
        ("cells covering the word", 100 * reads.share("word"), dict(color="#006837", marker="o")),
        ("words read by ≥ 1 of their cells", 100 * reads.words_read(), dict(color="#006837", marker="o", ls="--")),
        ("same cells, blank picture", 100 * reads.share("blank"), dict(color="#6b7280", marker="s")),
        ("the picture's other cells", 100 * reads.share("other"), dict(color="#9ca3af", marker="^", ls=":")),
    ]
    for label, values, style in lines:
        ax.plot(layers, values, label=label, **style)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("% reading the word (top-1)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title(title or f"patch lens on {reads.pictures} pictures, {len(reads.words)} written words", fontsize=9)
    return fig, ax


__all__ += ["patch_lens_image", "word_reads"]
