"""Drawing an activation-patching grid (:class:`phi3lab.inspect.patching.PatchingResult`).

Signed values on :mod:`phi3lab.colours`' diverging map centred at zero, with its scale drawn and its
numbers; cells under the noise floor left blank (no signal); positions labelled by their tokens.
Returns ``(fig, ax)`` and never calls ``plt.show()``; the numbers are the result's own.
"""

from __future__ import annotations

import numpy as np

from phi3lab.colours import colormap, scale

__all__ = ["patching_grid"]


def patching_grid(result, *, ax=None, normalized: bool = True, floor: float | None = None):
    """The ``[layer, position]`` (or ``[layer, head]``) grid of a patching result, coloured around 0.

    Args:
        result: a :class:`~phi3lab.inspect.patching.PatchingResult`.
        normalized: draw ``(patched − corrupted) / (clean − corrupted)`` (1 = the clean answer restored);
            else the raw metric.
        floor: magnitudes drawn as no signal (default :data:`phi3lab.colours.SCORE_FLOOR`).
    """
    import matplotlib.pyplot as plt

    from phi3lab.views.plotting import _colour_bar, _masked, _norm_args

    values = (result.normalized if normalized else result.grid).numpy()
    label = "share of the gap restored" if normalized else result.metric
    columns = "position"
    if values.ndim == 3 and values.shape[1] == 1:  # one position, every head: a layer × head grid
        values, columns = values[:, 0], "head"
    elif values.ndim == 3:  # layer × position × head: per cell, the head with the largest effect (sign kept)
        strongest = np.abs(values).argmax(axis=2)[..., None]
        values = np.take_along_axis(values, strongest, axis=2)[..., 0]
        label += " (strongest head)"
    elif "head" in result.dims:
        columns = "head"
    if values.ndim == 1:
        values = values[:, None]
    rows, cols = values.shape
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, min(2.5 + 0.42 * cols, 16)), 1.4 + 0.45 * rows), layout="constrained")
    else:
        fig = ax.figure
    top = float(np.nanmax(np.abs(values))) if values.size else 0.0
    # a restored share is drawn on a ±1 scale at least, so 0.3 looks like 0.3 and 1 like all of it
    s = scale(values, kind="score", label=label, floor=floor, vmax=max(1.0, top) if normalized else None)
    ax.imshow(_masked(values, s), cmap=colormap("score"), aspect="auto", interpolation="nearest", **_norm_args(s))
    _colour_bar(fig, ax, s)
    ax.set_yticks(range(rows), [f"L{layer}" for layer in result.layers])
    if columns == "position":
        ax.set_xticks(range(cols), [result.tokens[p].replace("<0x0A>", "\\n") for p in result.positions], rotation=90)
        ax.set_xlabel("position patched")
    else:
        ax.set_xticks(range(cols), [f"h{h}" for h in result.heads])
        where = (
            f"at position {result.positions[0]} {result.tokens[result.positions[0]]!r}"
            if result.positions
            else "everywhere"
        )
        ax.set_xlabel(f"head patched ({where})")
    ax.set_ylabel("layer")
    ax.set_title(f"patching {result.site}\nclean {result.clean:+.2f}, corrupted {result.corrupted:+.2f}", fontsize=10)
    return fig, ax
