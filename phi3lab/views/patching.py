"""Drawing an activation-patching grid (:class:`phi3lab.inspect.patching.PatchingResult`).

Signed values on :mod:`phi3lab.views.colours`' diverging map centred at zero, with its scale drawn and its
numbers; cells under the noise floor left blank (no signal); positions labelled by their tokens.
Returns ``(fig, ax)`` and never calls ``plt.show()``; the numbers are the result's own.
"""

from __future__ import annotations

import numpy as np

from phi3lab.views.colours import colormap, scale

__all__ = ["patching_grid"]


def patching_grid(result, *, ax=None, normalized: bool = True, floor: float | None = None):
    """The ``[layer, position]`` (or ``[layer, head]``) grid of a patching result, coloured around 0.

    Args:
        result: a :class:`~phi3lab.inspect.patching.PatchingResult`.
        normalized: draw ``(patched − corrupted) / (clean − corrupted)`` (1 = the clean answer restored);
            else the raw metric.
        floor: magnitudes drawn as no signal (default :data:`phi3lab.views.colours.SCORE_FLOOR`).
    """
    import matplotlib.pyplot as plt

    from phi3lab.views.plotting import _colour_bar, _masked, _norm_args

    values = (result.normalized if normalized else result.grid).numpy()
    label = "restored share of the clean−corrupted gap" if normalized else result.metric
    if values.ndim == 3:  # layer × position × head: per cell, the head with the largest effect (sign kept)
        strongest = np.abs(values).argmax(axis=2)[..., None]
        values = np.take_along_axis(values, strongest, axis=2)[..., 0]
        label += " (strongest head)"
    if values.ndim == 1:
        values = values[:, None]
    rows, cols = values.shape
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(2 + 0.42 * cols, 16), 1.2 + 0.45 * rows), layout="constrained")
    else:
        fig = ax.figure
    s = scale(values, kind="score", label=label, floor=floor)
    ax.imshow(_masked(values, s), cmap=colormap("score"), aspect="auto", interpolation="nearest", **_norm_args(s))
    _colour_bar(fig, ax, s)
    ax.set_yticks(range(rows), [f"L{layer}" for layer in result.layers])
    if "position" in result.dims:
        ax.set_xticks(range(cols), [result.tokens[p].replace("<0x0A>", "\\n") for p in result.positions], rotation=90)
        ax.set_xlabel("position patched")
    elif "head" in result.dims:
        ax.set_xticks(range(cols), [f"h{h}" for h in result.heads])
        ax.set_xlabel("head patched (every position)")
    ax.set_ylabel("layer")
    ax.set_title(f"patching {result.site}: clean {result.clean:+.2f}, corrupted {result.corrupted:+.2f}")
    return fig, ax
