"""AttentionExplorer: where a token looks, per layer and head, over the prompt's token strip.

    >>> import phi3lab
    >>> from phi3lab.views.widgets import AttentionExplorer
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> _, cache = lab.generate_with_cache("What is 2 plus 3?", max_new_tokens=3)
    >>> explorer = AttentionExplorer(cache)
    >>> explorer.agg, explorer.row == cache.answer_rows[0]
    ('mean', True)

The strip shows every text token with its role colour; an image's run of tokens is folded into
one chip per HD crop, one for the global view and one for its separators, so a 2,500-token vision
prompt is a strip of a few dozen chips.  Hovering or clicking a chip whose row was captured asks
Python for that one row: the heat on every chip (mean or max over the chosen layers and heads, or
rollout) and a thumbnail per layer × head.  Nothing else of the cache is sent.

:class:`AttentionView` computes those payloads from a :class:`~phi3lab.inspect.cache.Cache` without any
widget machinery; :class:`AttentionExplorer` is the thin widget over it.
"""

from __future__ import annotations

import html

import numpy as np
import traitlets

from phi3lab.prompts.patches import image_tokens
from phi3lab.prompts.token_view import SEGMENT_COLOURS
from phi3lab.views.widgets._base import (
    HEAT_STOPS,
    PhiWidget,
    chip,
    colour_bar,
    display_label,
    heat_colour,
    u8,
)

__all__ = ["AttentionView", "AttentionExplorer", "strip_items", "AGGREGATIONS", "THUMB_VALUES"]

AGGREGATIONS = ("mean", "max", "rollout")
THUMB_VALUES = 16384  # at most this many thumbnail cells per row (32 layers × 32 heads × 16 bins)
ROLES = {**SEGMENT_COLOURS, "answer": SEGMENT_COLOURS["assistant"]}


def check_cache(cache, who: str):
    """The checks every cache-reading widget makes, with messages that say what to pass instead."""
    from phi3lab.inspect.cache import Cache

    if not isinstance(cache, Cache):
        raise TypeError(f"{who} takes the Cache of `_, cache = lab.run_with_cache(...)`, got {type(cache).__name__}")
    if not cache.layers:
        raise ValueError(
            f"{who} needs captured attention; this cache holds no layers. Run lab.run_with_cache(..., layers='all')"
        )
    return cache


def strip_items(cache) -> tuple[list[list], np.ndarray]:
    """The chips of the token strip and, for every key position, the chip it belongs to.

    Returns:
        ``(items, chip_of_key)``: each item is ``[label, role, row, first position, tokens]`` (``row``
        is the captured row at that position, ``-1`` if none); ``chip_of_key[p]`` is the item index
        of position ``p``.
    """
    labels = cache.tokens
    table = cache.inputs.table.rows
    row_at = {p: i for i, p in enumerate(cache.positions)}
    spans = {im.start: im for im in cache.inputs.images}
    items: list[list] = []
    chip_of_key = np.zeros(len(labels), dtype=np.int64)
    p = 0
    while p < len(labels):
        image = spans.get(p)
        if image is None:
            role = table[p].segment if p < len(table) else "answer"
            chip_of_key[p] = len(items)
            items.append([display_label(labels[p]), role, row_at.get(p, -1), p, 1])
            p += 1
            continue
        groups: dict[tuple, list[int]] = {}  # crops in order, then the global view, then the separators
        for t in image_tokens(image.width, image.height, image.num_crops):
            key = (0, t.crop) if t.kind == "crop" else (1, 0) if t.kind == "global" else (2, 0)
            groups.setdefault(key, []).append(image.start + t.index)
        for key, members in sorted(groups.items()):
            name = f"crop {key[1]}" if key[0] == 0 else "global" if key[0] == 1 else "⏎"
            chip_of_key[members] = len(items)
            items.append([f"img{image.index + 1} {name}", "image", -1, members[0], len(members)])
        p = image.end
    return items, chip_of_key


class AttentionView:
    """The explorer's computations: strip, one row's heat and thumbnails, as wire-ready values.

    Args:
        cache: a :class:`~phi3lab.inspect.cache.Cache`.
        layers: the layers to offer (default every captured layer).

    Raises:
        TypeError: ``cache`` is not a Cache.
        ValueError: the cache holds no attention, or ``layers`` asks for one that was not captured.
    """

    def __init__(self, cache, layers=None):
        self.cache = check_cache(cache, "AttentionExplorer")
        chosen = list(cache.layers) if layers is None else ([layers] if isinstance(layers, int) else list(layers))
        missing = [layer for layer in chosen if layer not in cache.layers]
        if missing or not chosen:
            raise ValueError(
                f"layers {missing or chosen} were not captured; this cache holds layers "
                f"{list(cache.layers)}. Run lab.run_with_cache(..., layers='all') or pick from those"
            )
        self.layers = chosen
        self.items, self.chip_of_key = strip_items(cache)
        self.rows = sorted({item[2] for item in self.items if item[2] >= 0})
        # one copy of only the selectable rows: [rows, layers, heads, keys]
        per_layer = [cache.attention(layer)[0][:, self.rows].float().numpy() for layer in chosen]  # [heads, rows, keys]
        self._weights = np.ascontiguousarray(np.stack(per_layer).transpose(2, 0, 1, 3))
        self.heads = list(cache.heads) if cache.heads is not None else list(range(self._weights.shape[2]))
        order = np.argsort(self.chip_of_key, kind="stable")
        self._order, self._bounds = order, np.searchsorted(self.chip_of_key[order], np.arange(len(self.items)))
        self._rollout: dict[int, np.ndarray] | None = None

    # --- one row --------------------------------------------------------------------------------

    def _index(self, row: int) -> int:
        if row not in self.rows:
            raise IndexError(
                f"row {row} has no captured attention here; rows with attention: {self.rows[:8]}"
                f"{'…' if len(self.rows) > 8 else ''} (run with positions='all' for every token)"
            )
        return self.rows.index(row)

    def chip_sums(self, weights: np.ndarray) -> np.ndarray:
        """Sum ``[..., keys]`` attention into ``[..., chips]``."""
        keys = min(weights.shape[-1], len(self.chip_of_key))
        padded = np.zeros(weights.shape[:-1] + (len(self.chip_of_key),), dtype=np.float64)
        padded[..., :keys] = weights[..., :keys]
        return np.add.reduceat(padded[..., self._order], self._bounds, axis=-1)

    def rollout_row(self, row: int) -> np.ndarray:
        """Rollout of one row, computed for every selectable row at the first request (one pass)."""
        if self._rollout is None:
            rolled = self.cache.rollout(self.rows).numpy()
            self._rollout = {r: rolled[i] for i, r in enumerate(self.rows)}
        return self._rollout[row]

    def heat(self, row: int, agg: str = "mean", layer: int = -1, head: int = -1) -> np.ndarray:
        """Heat per chip for ``row``: ``mean``/``max`` over the focused layers and heads, or ``rollout``."""
        if agg not in AGGREGATIONS:
            raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")
        if agg == "rollout":
            self._index(row)
            return self.chip_sums(self.rollout_row(row))
        per_head = self.chip_sums(self._focus(self._weights[self._index(row)], layer, head))
        flat = per_head.reshape(-1, per_head.shape[-1])
        return flat.mean(0) if agg == "mean" else flat.max(0)

    def _focus(self, weights: np.ndarray, layer: int, head: int) -> np.ndarray:
        if layer != -1:
            if layer not in self.layers:
                raise ValueError(f"layer {layer} is not among the explorer's layers {self.layers}")
            weights = weights[[self.layers.index(layer)]]
        if head != -1:
            if head not in self.heads:
                raise ValueError(f"head {head} was not captured; captured heads: {self.heads}")
            weights = weights[:, [self.heads.index(head)]]
        return weights

    def thumbnails(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """``[layers, heads, bins]`` chip heat of every head (chips pooled into bins when there are many)
        and each head's peak, for the layer × head grid."""
        per_head = self.chip_sums(self._weights[self._index(row)])
        n = per_head.shape[-1]
        bins = max(1, min(n, THUMB_VALUES // max(1, per_head.shape[0] * per_head.shape[1])))
        if bins < n:
            edges = np.linspace(0, n, bins + 1).astype(int)
            per_head = np.add.reduceat(per_head, edges[:-1], axis=-1)
        return per_head, per_head.max(-1)

    def payload(self, row: int, agg: str = "mean", layer: int = -1, head: int = -1) -> dict:
        """Everything the browser needs to show ``row``: the values of the widget's row traits."""
        heat = self.heat(row, agg, layer, head)
        thumbs, peaks = self.thumbnails(row)
        heat_b64, vmax = u8(heat)
        normed = thumbs / np.maximum(peaks[..., None], 1e-12)
        thumbs_b64, _ = u8(normed, 1.0)
        return {
            "heat": heat_b64,
            "vmax": round(vmax, 6),
            "thumbs": thumbs_b64,
            "thumb_bins": int(thumbs.shape[-1]),
            "thumb_peaks": [round(float(x), 4) for x in peaks.reshape(-1)],
            "info": self.describe(row, agg, layer, head),
        }

    def describe(self, row: int, agg: str, layer: int, head: int) -> str:
        position = self.cache.positions[row]
        label = display_label(self.cache.tokens[position])
        if agg == "rollout":
            what = "rollout through every layer"
        else:
            layers = f"layer {layer}" if layer != -1 else f"{len(self.layers)} layer(s)"
            heads = f"head {head}" if head != -1 else f"{len(self.heads)} head(s)"
            what = f"{agg} over {layers} × {heads}"
        return f"row at position {position} {label!r}: {what}"

    def initial(self) -> dict:
        """The widget's first state: the strip, the colours, and the first answer row."""
        row = self.cache.answer_rows[0] if self.cache.answer_rows[0] in self.rows else self.rows[-1]
        return {
            "items": self.items,
            "roles": ROLES,
            "palette": list(HEAT_STOPS),
            "layers": self.layers,
            "heads": self.heads,
            "row": row,
            "pinned": row,
            **self.payload(row),
        }

    def to_text(self, row: int, agg: str = "mean", layer: int = -1, head: int = -1, top: int = 5) -> str:
        heat = self.heat(row, agg, layer, head)
        best = np.argsort(heat)[::-1][:top]
        tops = ", ".join(f"{self.items[i][0]!r} {heat[i]:.3f}" for i in best)
        return f"{self.describe(row, agg, layer, head)}\n  most attended: {tops}"

    def to_html(self, row: int, agg: str = "mean", layer: int = -1, head: int = -1) -> str:
        heat = self.heat(row, agg, layer, head)
        top = float(heat.max()) or 1.0
        chips = []
        for i, (label, role, item_row, first, count) in enumerate(self.items):
            background = heat_colour(heat[i] / top) if heat[i] > 0 else "#f3f4f6"
            title = f"#{first}" + (f" ×{count}" if count > 1 else "") + f" · {role} · {heat[i]:.4f}"
            if item_row == row:
                title += " · the row shown"
            chips.append(chip(label, background, title, ROLES.get(role)))
        return (
            f'<div style="font-size:90%">{html.escape(self.describe(row, agg, layer, head))}</div>'
            f'<div style="line-height:1.9">{"".join(chips)}</div>{colour_bar(top, "share of attention")}'
        )


class AttentionExplorer(PhiWidget):
    """Token strip, per-token attention heat and a layer × head grid, one row at a time.

    Args:
        cache: the :class:`~phi3lab.inspect.cache.Cache` of ``lab.run_with_cache(...)`` (``positions='all'`` lets
            every token be explored; ``'last'`` the last prompt token and the answer).
        layers: the layers to offer (default every captured layer).

    Hover a token to preview its row, click to keep it; pick ``mean``, ``max`` or ``rollout``; click a
    thumbnail to focus one head, a layer label for one layer, "all" to go back.
    """

    _front = "attention"
    items = traitlets.List().tag(sync=True)
    roles = traitlets.Dict().tag(sync=True)
    palette = traitlets.List().tag(sync=True)
    layers = traitlets.List().tag(sync=True)
    heads = traitlets.List().tag(sync=True)
    row = traitlets.Int().tag(sync=True)
    pinned = traitlets.Int().tag(sync=True)
    agg = traitlets.Unicode("mean").tag(sync=True)
    focus = traitlets.List([-1, -1]).tag(sync=True)
    heat = traitlets.Unicode().tag(sync=True)
    vmax = traitlets.Float().tag(sync=True)
    thumbs = traitlets.Unicode().tag(sync=True)
    thumb_bins = traitlets.Int().tag(sync=True)
    thumb_peaks = traitlets.List().tag(sync=True)
    info = traitlets.Unicode().tag(sync=True)

    def __init__(self, cache, layers=None):
        self.view = AttentionView(cache, layers)
        super().__init__(**self.view.initial())
        self.observe(self._update, names=["row", "agg", "focus"])

    def _update(self, change) -> None:
        self._refresh(change, lambda: self.view.payload(self.row, self.agg, *self.focus), {"agg": "mean"})

    def show(self, row: int | None = None, agg: str | None = None, layer: int = -1, head: int = -1) -> None:
        """Show ``row`` (and keep it) with ``agg`` and a layer/head focus, as clicks in the browser do."""
        with self.hold_sync():
            if agg is not None:
                self.agg = agg
            self.focus = [layer, head]
            if row is not None:
                self.pinned = row
                self.row = row

    def to_text(self) -> str:
        return self.view.to_text(self.row, self.agg, *self.focus)

    def to_html(self) -> str:
        return self.view.to_html(self.row, self.agg, *self.focus)
