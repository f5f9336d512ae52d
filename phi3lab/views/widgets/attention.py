"""AttentionExplorer: where a token looks, per layer and head, over the prompt's token strip.

    >>> import phi3lab
    >>> from phi3lab.views.widgets import AttentionExplorer
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> _, cache = lab.generate_with_cache("What is 2 plus 3?", max_new_tokens=3)
    >>> explorer = AttentionExplorer(cache)
    >>> explorer.agg, explorer.row == cache.answer_rows[0], explorer.scale["kind"]
    ('mean', True, 'share')

The strip shows every text token with its role colour; an image's run of tokens is folded into
one chip per HD crop, one for the global view and one for its separators, so a 2,500-token vision
prompt is a strip of a few dozen chips.  Hovering or clicking a chip whose row was captured asks
Python for that one row: the heat on every chip (mean or max over the chosen layers and heads, or
rollout) and a thumbnail per layer × head, all on one scale drawn under the strip.

Nothing is copied out of the cache: a row is read from each layer's attention when it is asked for
(rows on demand, from :meth:`~phi3lab.inspect.cache.Cache.attention`), summed per chip and sent at one byte
per value.  Building the explorer reads one
row, plus — for the ``offline`` payload an exported page uses — each saved row's mean over every
layer and head, a block of rows at a time.  Before it reads anything it checks the memory it will
need (the cache assembling each shown layer's ``[heads, rows, keys]`` map, as
:meth:`~phi3lab.inspect.cache.Cache.attention` does on first use) against ``max_bytes``, as
:func:`~phi3lab.inspect.cache.run_with_cache` does, and refuses with advice.

:class:`AttentionView` computes those payloads from a :class:`~phi3lab.inspect.cache.Cache` without any
widget machinery; :class:`AttentionExplorer` is the thin widget over it.
"""

from __future__ import annotations

import base64
import html

import numpy as np
import torch
import traitlets

from phi3lab.colours import SHARE_FLOOR, encode, legend_html, scale
from phi3lab.inspect.memory import check_max_bytes, check_memory, memory_limit
from phi3lab.prompts.patches import image_tokens
from phi3lab.prompts.token_view import SEGMENT_COLOURS
from phi3lab.views.widgets._base import OFFLINE_BYTES, PhiWidget, chip, display_label, spread

__all__ = [
    "AttentionView",
    "AttentionExplorer",
    "strip_items",
    "pattern",
    "AGGREGATIONS",
    "THUMB_VALUES",
    "OFFLINE_TOP",
]

AGGREGATIONS = ("mean", "max", "rollout")
THUMB_VALUES = 16384  # at most this many thumbnail cells per row (32 layers × 32 heads × 16 bins)
OFFLINE_TOP = 24  # an exported page keeps each saved row's strongest chips, this many
ROLES = {**SEGMENT_COLOURS, "answer": SEGMENT_COLOURS["assistant"]}
SHARE = "share of attention"
_BLOCK_VALUES = 4 << 20  # float32 sums held at a time while building the offline payload (16 MiB)


def check_cache(cache, who: str):
    """The checks every cache-reading widget makes, with messages that say what to pass instead."""
    from phi3lab.inspect.cache import Cache

    if not isinstance(cache, Cache):
        raise TypeError(f"{who} takes the Cache of `_, cache = lab.run_with_cache(...)`, got {type(cache).__name__}")
    if "pattern" not in cache.sites or not cache.layers:
        raise ValueError(
            f"{who} needs the attention rows; this cache keeps {', '.join(cache.sites) or 'nothing'} at layers "
            f"{list(cache.layers)}. Run lab.run_with_cache(...) with sites=[..., 'pattern'] and layers='all'"
        )
    return cache


def pattern(cache, layer: int) -> torch.Tensor:
    """``[batch, heads, rows, keys]`` attention of one captured layer: ``cache.attention(layer)``, which
    assembles ``cache["pattern", layer]`` once and keeps it (a ``cache["pattern", layer]`` read copies)."""
    return cache.attention(layer)


def choose_layers(cache, layers) -> list[int]:
    """``None`` or ``'all'`` (every captured layer), one int, or a list of captured layers."""
    captured = list(cache.layers)
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return captured
    if isinstance(layers, str) or isinstance(layers, bool):
        raise TypeError(f"layers must be 'all', an int or a list of ints, got {layers!r}")
    chosen = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in chosen):
        raise TypeError(f"layers must be 'all', an int or a list of ints, got {layers!r}")
    missing = [int(x) for x in chosen if x not in captured]
    if missing or not chosen:
        raise ValueError(
            f"layers {missing or chosen} were not captured; this cache holds layers {captured}. "
            "Pass layers='all' or some of those, or run lab.run_with_cache(..., layers='all')"
        )
    return [int(x) for x in chosen]


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
    """The explorer's computations: strip, one row's heat and thumbnails, the offline payload.

    Args:
        cache: a :class:`~phi3lab.inspect.cache.Cache`.
        layers: the layers to offer: ``'all'`` (default, every captured layer), an int or a list.
        max_bytes: bytes the explorer may make the process use (default a quarter of free memory).
        offline: build the payload an exported page answers hovers from (see :data:`OFFLINE_TOP`).

    Raises:
        TypeError: ``cache`` is not a Cache, or ``layers`` is neither ``'all'``, an int nor a list of ints.
        ValueError: the cache holds no attention, or ``layers`` asks for one that was not captured.
        MemoryLimitError: the memory it needs is over ``max_bytes`` (a ``MemoryError``; says what to pass).
    """

    def __init__(self, cache, layers="all", *, max_bytes: int | None = None, offline: bool = True):
        self.cache = check_cache(cache, "AttentionExplorer")
        max_bytes = check_max_bytes(max_bytes)
        self.layers = choose_layers(cache, layers)
        self.positions = cache.positions
        self.items, self.chip_of_key = strip_items(cache)
        self.rows = sorted({item[2] for item in self.items if item[2] >= 0})
        if not self.rows:
            raise ValueError(
                "no text token of this cache has a captured row; run lab.run_with_cache(..., positions='all') "
                "or positions='last' to keep the last prompt row"
            )
        config = cache.lab.model.config
        self.heads = list(cache.heads) if cache.heads is not None else list(range(config.num_attention_heads))
        self._preflight(max_bytes, offline)
        order = np.argsort(self.chip_of_key, kind="stable")
        self._order, self._bounds = order, np.searchsorted(self.chip_of_key[order], np.arange(len(self.items)))
        self._rollout: dict[int, np.ndarray] | None = None
        self._last: tuple[int, np.ndarray] | None = None
        self.offline = self._offline() if offline else {}

    def _preflight(self, max_bytes: int | None, offline: bool) -> None:
        """Refuse before reading anything when the memory needed is over ``max_bytes``."""
        rows, keys = len(self.positions), self.cache.num_tokens
        assembled = 4 * len(self.layers) * len(self.heads) * rows * keys  # Cache.attention's map per layer
        working = 8 * 3 * _BLOCK_VALUES if offline else 0  # a block of sums over heads, and its chip sums
        working += 8 * len(self.layers) * len(self.heads) * keys  # one row of every layer and head, float64 sums
        check_memory(
            assembled + working,
            memory_limit() if max_bytes is None else max_bytes,
            f"AttentionExplorer over {len(self.layers)} layer(s) × {len(self.heads)} heads × {rows} rows × {keys} keys",
            "pass layers=[...] to show fewer layers, capture fewer rows (run_with_cache(..., positions='last')), "
            "or pass max_bytes= if you know the memory is there",
        )

    # --- one row --------------------------------------------------------------------------------

    def _index(self, row: int) -> int:
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or row not in self.rows:
            raise IndexError(
                f"row {row!r} has no captured attention here; rows with attention: {self.rows[:8]}"
                f"{'…' if len(self.rows) > 8 else ''} (run with positions='all' for every token)"
            )
        return int(row)

    def weights(self, row: int) -> np.ndarray:
        """``[layers, heads, keys]`` attention of one captured row, read from the cache on demand."""
        row = self._index(row)
        if self._last is None or self._last[0] != row:
            self._last = (
                row,
                np.stack([pattern(self.cache, layer)[0][:, row].float().numpy() for layer in self.layers]),
            )
        return self._last[1]

    def chip_sums(self, weights: np.ndarray) -> np.ndarray:
        """Sum ``[..., keys]`` attention into ``[..., chips]``."""
        keys = min(weights.shape[-1], len(self.chip_of_key))
        padded = np.zeros(weights.shape[:-1] + (len(self.chip_of_key),), dtype=np.float64)
        padded[..., :keys] = weights[..., :keys]
        if len(self.items) == len(self.chip_of_key):  # one key per chip (no picture): nothing to sum
            return padded
        return np.add.reduceat(padded[..., self._order], self._bounds, axis=-1)

    def rollout_row(self, row: int) -> np.ndarray:
        """Rollout of one row, computed for every selectable row at the first request (one pass)."""
        if self._rollout is None:
            rolled = self.cache.rollout(self.rows).numpy()
            self._rollout = {r: rolled[i] for i, r in enumerate(self.rows)}
        return self._rollout[row]

    def heat(self, row: int, agg: str = "mean", layer: int = -1, head: int = -1) -> np.ndarray:
        """Heat per chip for ``row``: ``mean``/``max`` over the focused layers and heads, or ``rollout``
        (which runs through every layer and head: the focus does not apply)."""
        if agg not in AGGREGATIONS:
            raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")
        if agg == "rollout":
            return self.chip_sums(self.rollout_row(self._index(row)))
        per_head = self.chip_sums(self._focus(self.weights(row), layer, head))
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

    def thumbnails(self, row: int) -> np.ndarray:
        """``[layers, heads, bins]`` chip heat of every head (chips pooled into bins when there are many)."""
        per_head = self.chip_sums(self.weights(row))
        n = per_head.shape[-1]
        bins = max(1, min(n, THUMB_VALUES // max(1, per_head.shape[0] * per_head.shape[1])))
        if bins < n:
            edges = np.linspace(0, n, bins + 1).astype(int)
            per_head = np.add.reduceat(per_head, edges[:-1], axis=-1)
        return per_head

    def payload(self, row: int, agg: str = "mean", layer: int = -1, head: int = -1) -> dict:
        """Everything the browser needs to show ``row``: the values of the widget's row traits."""
        heat = self.heat(row, agg, layer, head)
        thumbs = self.thumbnails(row)
        strip = scale(heat, kind="share", label=SHARE)
        grid = scale(thumbs, kind="share", label=f"{SHARE} (each head)")
        return {
            "heat": encode(heat, strip),
            "scale": strip.to_json(),
            "thumbs": encode(thumbs, grid),
            "thumb_bins": int(thumbs.shape[-1]),
            "thumb_scale": grid.to_json(),
            "thumb_peaks": [round(float(x), 4) for x in thumbs.max(-1).reshape(-1)],
            "info": self.describe(row, agg, layer, head),
        }

    def describe(self, row: int, agg: str, layer: int, head: int) -> str:
        position = self.positions[row]
        label = display_label(self.cache.tokens[position])
        if agg == "rollout":
            what = "rollout through every layer and head (a layer or head focus does not apply)"
        else:
            layers = f"layer {layer}" if layer != -1 else f"{len(self.layers)} layer(s)"
            heads = f"head {head}" if head != -1 else f"{len(self.heads)} head(s)"
            what = f"{agg} over {layers} × {heads}"
        return f"row at position {position} {label!r}: {what}"

    def initial(self) -> dict:
        """The widget's first state: the strip, the colours, the first answer row, the offline payload."""
        row = self.cache.answer_rows[0] if self.cache.answer_rows[0] in self.rows else self.rows[-1]
        return {
            "items": self.items,
            "roles": ROLES,
            "layers": self.layers,
            "heads": self.heads,
            "row": row,
            "pinned": row,
            "offline": self.offline,
            **self.payload(row),
        }

    # --- the offline payload ---------------------------------------------------------------------

    def _offline(self) -> dict:
        """Each saved row's mean over every shown layer and head, as its :data:`OFFLINE_TOP` strongest chips
        (one byte each on the row's own scale, 0: no signal), within :data:`OFFLINE_BYTES` of text."""
        n_chips = len(self.items)
        top = min(OFFLINE_TOP, n_chips)
        wide = n_chips > 65535
        entry = top * (1 + (4 if wide else 2)) * 4 / 3 + 12  # base64 of value and index bytes, the row's top in JSON
        selectable = {r: i for i, r in enumerate(self.rows)}
        answer = [selectable[r] for r in self.cache.answer_rows if r in selectable]
        kept = [self.rows[i] for i in spread(len(self.rows), answer, int((OFFLINE_BYTES - 1024) // entry))]
        means = np.zeros((len(kept), n_chips))
        wanted = np.asarray(kept)
        keys = self.cache.num_tokens
        step = max(1, _BLOCK_VALUES // max(1, keys))  # rows summed at a time: their sums stay ≤ 16 MiB
        first = 0
        while first < len(wanted):  # blocks start at a saved row, so rows no one can hover are not summed
            start = int(wanted[first])
            inside = np.flatnonzero((wanted >= start) & (wanted < start + step))
            first = int(inside[-1]) + 1
            stop = int(wanted[inside[-1]]) + 1
            total = None
            for layer in self.layers:  # a contiguous block of rows, summed over heads: no copy of the maps
                part = pattern(self.cache, layer)[0][:, start:stop].sum(0)
                total = part if total is None else total + part
            chosen = total[torch.as_tensor(wanted[inside] - start)].double().numpy()
            means[inside] = self.chip_sums(chosen / (len(self.layers) * len(self.heads)))
        index = (
            np.argpartition(-means, top - 1, axis=1)[:, :top]
            if top < n_chips
            else np.tile(np.arange(n_chips), (len(kept), 1))
        )
        values = np.take_along_axis(means, index, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        index, values = np.take_along_axis(index, order, axis=1), np.take_along_axis(values, order, axis=1)
        tops = values[:, 0] if top else np.zeros(len(kept))
        fraction = values / np.maximum(tops[:, None], 1e-30)
        quantised = np.where(values >= SHARE_FLOOR, np.clip(np.rint(fraction * 255), 1, 255), 0).astype(np.uint8)
        return {
            "rows": kept,
            "top": top,
            "index": base64.b64encode(index.astype("<u4" if wide else "<u2").tobytes()).decode("ascii"),
            "index_bytes": 4 if wide else 2,
            "values": base64.b64encode(quantised.tobytes()).decode("ascii"),
            "vmax": [float(f"{t:.4g}") for t in tops],
            "floor": SHARE_FLOOR,
            "rows_captured": len(self.rows),
            "chips": n_chips,
            "cap_bytes": OFFLINE_BYTES,
            "what": f"mean over {len(self.layers)} layer(s) × {len(self.heads)} heads",
        }

    def offline_row(self, row: int) -> np.ndarray:
        """The chip heat an exported page shows for ``row`` (decoded from :attr:`offline`; for the tests)."""
        data = self.offline
        i = data["rows"].index(row)
        top = data["top"]
        index = np.frombuffer(base64.b64decode(data["index"]), "<u4" if data["index_bytes"] == 4 else "<u2")
        values = np.frombuffer(base64.b64decode(data["values"]), np.uint8)
        out = np.zeros(data["chips"])
        out[index[i * top : (i + 1) * top]] = values[i * top : (i + 1) * top] / 255 * data["vmax"][i]
        return out

    # --- static forms ------------------------------------------------------------------------------

    def to_text(self, row: int, agg: str = "mean", layer: int = -1, head: int = -1, top: int = 5) -> str:
        heat = self.heat(row, agg, layer, head)
        best = np.argsort(heat)[::-1][:top]
        tops = ", ".join(f"{self.items[i][0]!r} {heat[i]:.3f}" for i in best)
        return f"{self.describe(row, agg, layer, head)}\n  most attended: {tops}"

    def to_html(self, row: int, agg: str = "mean", layer: int = -1, head: int = -1) -> str:
        heat = self.heat(row, agg, layer, head)
        s = scale(heat, kind="share", label=SHARE)
        chips = []
        for i, ((label, role, item_row, first, count), colour) in enumerate(zip(self.items, s.colours(heat))):
            title = f"#{first}" + (f" ×{count}" if count > 1 else "") + f" · {role} · {heat[i]:.4f}"
            if colour is None:
                title += " · no signal"
            if item_row == row:
                title += " · the row shown"
            chips.append(chip(label, colour, title, ROLES.get(role), dashed=False))
        return (
            f'<div style="font-size:90%">{html.escape(self.describe(row, agg, layer, head))}</div>'
            f'<div style="line-height:1.9">{"".join(chips)}</div>{legend_html(s)}'
        )


class AttentionExplorer(PhiWidget):
    """Token strip, per-token attention heat and a layer × head grid, one row at a time.

    Args:
        cache: the :class:`~phi3lab.inspect.cache.Cache` of ``lab.run_with_cache(...)`` or
            ``lab.generate_with_cache(...)`` (``positions='all'`` lets every token be explored; ``'last'`` the
            last prompt token and the answer).
        layers: the layers to offer: ``'all'`` (default), an int or a list of captured layers.
        max_bytes: bytes it may make the process use (default a quarter of free memory; checked first).
        offline: save the payload an exported page answers hovers from (default ``True``).

    Hover a token to preview its row, click to keep it; pick ``mean``, ``max`` or ``rollout``; click a
    thumbnail to focus one head, a layer label for one layer, "all heads" to go back.  Rollout runs
    through every layer and head, so choosing it clears the focus, and focusing a head goes back to mean.
    """

    _front = "attention"
    items = traitlets.List().tag(sync=True)
    roles = traitlets.Dict().tag(sync=True)
    layers = traitlets.List().tag(sync=True)
    heads = traitlets.List().tag(sync=True)
    row = traitlets.Int().tag(sync=True)
    pinned = traitlets.Int().tag(sync=True)
    agg = traitlets.Unicode("mean").tag(sync=True)
    focus = traitlets.List([-1, -1]).tag(sync=True)
    heat = traitlets.Unicode().tag(sync=True)
    scale = traitlets.Dict().tag(sync=True)
    thumbs = traitlets.Unicode().tag(sync=True)
    thumb_bins = traitlets.Int().tag(sync=True)
    thumb_scale = traitlets.Dict().tag(sync=True)
    thumb_peaks = traitlets.List().tag(sync=True)
    info = traitlets.Unicode().tag(sync=True)
    offline = traitlets.Dict().tag(sync=True)

    def __init__(self, cache, layers="all", *, max_bytes: int | None = None, offline: bool = True):
        self.view = AttentionView(cache, layers, max_bytes=max_bytes, offline=offline)
        self._adjusting = False
        super().__init__(**self.view.initial())
        self.observe(self._update, names=["row", "agg", "focus"])

    def _update(self, change) -> None:
        if self._adjusting:
            return
        self._adjusting = True
        try:
            with self.hold_sync():
                focused = list(self.focus) != [-1, -1]
                if change["name"] == "agg" and self.agg == "rollout" and focused:
                    self.focus = [-1, -1]  # rollout runs through every layer and head
                elif change["name"] == "focus" and focused and self.agg == "rollout":
                    self.agg = "mean"  # a head was chosen: show that head
        finally:
            self._adjusting = False
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
