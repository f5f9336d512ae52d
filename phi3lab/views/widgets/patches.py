"""PatchExplorer: a picture with its HD crop grid, each cell's image token, and where the answer looks.

    >>> import phi3lab
    >>> from PIL import Image
    >>> from phi3lab.views.widgets import PatchExplorer
    >>> vision = phi3lab.load("tiny-vision", verbose=False)
    >>> picture = Image.new("RGB", (400, 300), "white")
    >>> _, cache = vision.generate_with_cache("<|image_1|>\\nWhat is this?", [picture], max_new_tokens=2, num_crops=4)
    >>> explorer = PatchExplorer(cache)
    >>> explorer.geometry["grid"], len(explorer.targets) == len(cache.answer_rows)
    ([2, 2], True)

Two views of one picture, as Phi-3-vision sees it: the HD canvas cut into 336-pixel crops of 12 × 12
cells (one image token each) and the 12 × 12 global view of the whole canvas.  Hovering a cell names
its token in both views and the value it gets; clicking an answer token shows where the row that
produced it looks (mean attention over the chosen layers, rollout, or — given an attribution — the
attribution's scores on the cells).  Both views share one scale, drawn with its numbers.

The picture keeps its own colours (:mod:`phi3lab.colours`): a neutral veil covers the cells with
little or no signal and lifts where the value is high; signed attributions add a rim of their sign's
colour.  Values under the noise floor count as no signal.  The explorer opens on the most informative
answer token: the one whose attribution on this picture is strongest, or, without an attribution, the
one whose attention on the picture is largest.

The browser gets the picture once (a JPEG of at most 448 pixels a side), the positions of every
cell's token, and per interaction two grids of bytes.  Every position comes from
:func:`phi3lab.prompts.patches.image_tokens`, the one home of the token order.  The ``offline``
payload holds the attention (and attribution) grids of every answer token, so an exported page
switches between them without a kernel.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import traitlets

from phi3lab.colours import VEIL, Scale, encode, legend_html, scale, veil_alpha
from phi3lab.inspect.maps import ImageHeat
from phi3lab.prompts.patches import CELLS, image_tokens
from phi3lab.views.widgets._base import OFFLINE_BYTES, PhiWidget, data_url, display_label, spread, u32
from phi3lab.views.widgets.attention import check_cache, pattern

__all__ = ["PatchView", "PatchExplorer", "SOURCES", "overlay_png"]

SOURCES = ("attention", "rollout", "attribution")


def _lab(cache):
    return cache.lab  # the Lab that ran the cache: its tokenizer names the answer tokens


def _check_image(cache, image: int, who: str):
    if not cache.inputs.images:
        spec = getattr(_lab(cache), "spec", None)
        why = (
            f"{getattr(spec, 'name', 'this model')} is a text model"
            if getattr(spec, "modality", "") == "text"
            else "this cache's prompt has no image"
        )
        raise ValueError(
            f"{who} shows an image's patches, and {why}: load a vision model "
            "(phi3lab.load('tiny-vision')) and run a prompt with <|image_1|> and images=[picture]"
        )
    return cache.inputs.image(image)  # IndexError naming the images there are


class PatchView:
    """The patch explorer's computations for one image of a cache.

    Args:
        cache: a :class:`~phi3lab.inspect.cache.Cache` of a Phi-3-vision prompt with images.
        image: 0-based image index.
        attribution: optional; an object with ``target_tokens`` and ``image_map(image)`` (see
            :mod:`phi3lab.views.widgets.attribution`) whose maps become the ``"attribution"`` source.

    Raises:
        TypeError: not a Cache. ValueError: no captured attention, or no image (a text model).
        IndexError: ``image`` out of range (the message lists the images there are).
    """

    def __init__(self, cache, image: int = 0, attribution=None):
        self.cache = check_cache(cache, "PatchExplorer")
        self.span = _check_image(cache, image, "PatchExplorer")
        span = self.span
        tokens = image_tokens(span.width, span.height, span.num_crops)
        rows, cols = span.layout.grid
        self.crop_pos = np.zeros((rows * CELLS, cols * CELLS), dtype=np.int64)
        self.global_pos = np.zeros((CELLS, CELLS), dtype=np.int64)
        separators = []
        for t in tokens:
            if t.kind == "crop":
                self.crop_pos[t.row, t.col] = span.start + t.index
            elif t.kind == "global":
                self.global_pos[t.row, t.col] = span.start + t.index
            else:
                separators.append(span.start + t.index)
        self.separator_pos = np.array(separators, dtype=np.int64)
        self.rows = list(cache.answer_rows)
        tokenizer = _lab(cache).tokenizer
        produced = list(cache.answer_ids) or [None]
        self.targets = [
            [display_label(tokenizer.convert_ids_to_tokens(t)) if t is not None else "next token", r]
            for t, r in zip(produced, self.rows)
        ]
        self.layers = list(cache.layers)
        # the answer rows only: [targets, layers, heads, keys]
        per_layer = [pattern(cache, layer)[0][:, self.rows].float().numpy() for layer in self.layers]
        self._weights = np.ascontiguousarray(np.stack(per_layer).transpose(2, 0, 1, 3))
        self._rollout: np.ndarray | None = None
        self.attribution = attribution
        self._maps = None
        if attribution is not None:
            from phi3lab.views.widgets.attribution import image_grids

            self._maps = image_grids(attribution, image, self)
        self.sources = ["attention", "rollout"] + (["attribution"] if self._maps is not None else [])
        self.floor = _attribution_floor(attribution)

    # --- one target -----------------------------------------------------------------------------

    def row_values(self, target: int, source: str = "attention", layer: int = -1) -> np.ndarray:
        """Values over every key position for one answer token (index into :attr:`targets`)."""
        if not 0 <= target < len(self.targets):
            raise IndexError(
                f"target {target} does not exist; there are {len(self.targets)} answer tokens "
                f"(0..{len(self.targets) - 1})"
            )
        if source == "attention":
            weights = self._weights[target]
            if layer != -1:
                if layer not in self.layers:
                    raise ValueError(f"layer {layer} was not captured; captured layers: {self.layers}")
                weights = weights[[self.layers.index(layer)]]
            return weights.mean(axis=(0, 1))
        if source == "rollout":
            if self._rollout is None:
                self._rollout = self.cache.rollout(self.rows).numpy()
            return self._rollout[target]
        if source == "attribution":
            raise ValueError("the attribution source gives grids, not key rows; use grids()")
        raise ValueError(f"source must be one of {self.sources}, got {source!r}")

    def grids(self, target: int, source: str = "attention", layer: int = -1) -> ImageHeat:
        """The chosen source on this image's crop and global-view grids, as an :class:`ImageHeat`."""
        span = self.span
        if source == "attribution":
            if self._maps is None:
                raise ValueError("no attribution was given: PatchExplorer(cache, attribution=...)")
            if not 0 <= target < len(self._maps):
                raise IndexError(f"target {target} does not exist; the attribution has {len(self._maps)} targets")
            crops, glob = self._maps[target]
            return ImageHeat(crops, glob, 0.0, span.width, span.height, span.num_crops)
        row = self.row_values(target, source, layer)
        pad = np.zeros(span.end)
        pad[: min(len(row), span.end)] = row[: span.end]
        return ImageHeat(
            pad[self.crop_pos],
            pad[self.global_pos],
            float(pad[self.separator_pos].sum()),
            span.width,
            span.height,
            span.num_crops,
        )

    def scale_of(self, heat: ImageHeat, source: str) -> Scale:
        """One scale for both views: shares for attention and rollout, signed scores for an attribution."""
        if source == "attribution":
            return scale(heat.crops, heat.global_view, kind="score", label="attribution (Δ log p)", floor=self.floor)
        label = "rolled-out attention" if source == "rollout" else "share of attention"
        return scale(heat.crops, heat.global_view, kind="share", label=f"{label} per cell")

    def payload(self, target: int, source: str = "attention", layer: int = -1) -> dict:
        heat = self.grids(target, source, layer)
        s = self.scale_of(heat, source)
        return {
            "heat_crops": encode(heat.crops, s),
            "heat_global": encode(heat.global_view, s),
            "scale": s.to_json(),
            "info": self.describe(target, source, layer, heat, s),
        }

    def describe(
        self, target: int, source: str, layer: int, heat: ImageHeat | None = None, s: Scale | None = None
    ) -> str:
        label, row = self.targets[target]
        what = {
            "attention": f"mean attention over {'layer ' + str(layer) if layer != -1 else 'every layer'}, all heads",
            "rollout": "attention rollout",
            "attribution": "attribution: red supports it, blue works against it",
        }[source]
        text = f"{label!r} (row {self.cache.positions[row]}): {what}"
        if heat is not None and source != "attribution":
            text += (
                f" · on this image {heat.total:.3f} of the row (crops {heat.crops.sum():.3f}, "
                f"global view {heat.global_view.sum():.3f})"
            )
        if s is not None and not s.signal:
            text += f" · no signal: every value is under the noise floor {s.floor:.1e}"
        return text

    def most_informative(self) -> int:
        """The answer token to open on: the strongest attribution on this picture, else the most attention on it."""
        if self._maps is not None:
            peaks = [
                max(float(np.nanmax(np.abs(c), initial=0)), float(np.nanmax(np.abs(g), initial=0)))
                for c, g in self._maps
            ]
            return int(np.argmax(peaks))
        span = self.span
        totals = self._weights[..., span.start : span.end].mean(axis=(1, 2)).sum(-1)
        return int(np.argmax(totals))

    def offline_payload(self) -> dict:
        """The attention (and attribution) grids of every answer token, for a page without a kernel."""
        per = {}
        sources = [s for s in ("attention", "attribution") if s in self.sources]
        cells = self.crop_pos.size + self.global_pos.size
        each = cells * 4 / 3 + 600  # base64 of two grids, the scale and the info line
        kept = spread(len(self.targets), [self.most_informative()], int(OFFLINE_BYTES // (each * len(sources))))
        for source in sources:
            have = len(self._maps) if source == "attribution" else len(self.targets)
            per[source] = {str(t): self.payload(t, source) for t in kept if t < have}
        return {"targets": kept, "sources": sources, "payloads": per, "cap_bytes": OFFLINE_BYTES}

    def initial(self) -> dict:
        span = self.span
        layout = span.layout
        target = self.most_informative()
        source = "attribution" if self._maps is not None else "attention"
        return {
            "picture": data_url(span.image),
            "geometry": {
                "width": span.width,
                "height": span.height,
                "num_crops": span.num_crops,
                "padded": list(layout.padded),
                "pad_box": list(layout.pad_box),
                "grid": list(layout.grid),
                "cells": CELLS,
                "image": span.index + 1,
            },
            "crop_pos": u32(self.crop_pos.reshape(-1)),
            "global_pos": u32(self.global_pos.reshape(-1)),
            "targets": self.targets,
            "layers": self.layers,
            "sources": self.sources,
            "target": target,
            "source": source,
            "layer": -1,
            "offline": self.offline_payload(),
            **self.payload(target, source),
        }

    def to_text(self, target: int, source: str = "attention", layer: int = -1) -> str:
        heat = self.grids(target, source, layer)
        return "\n".join(
            [self.describe(target, source, layer, heat), self.scale_of(heat, source).to_text(), heat.to_text()]
        )

    def to_html(self, target: int, source: str = "attention", layer: int = -1) -> str:
        heat = self.grids(target, source, layer)
        s = self.scale_of(heat, source)
        parts = []
        for view, name in (("crops", "HD crops"), ("global", "global view")):
            png = overlay_png(
                self.span.image, heat.to_pixels(view), s, self.span.layout.grid if view == "crops" else None
            )
            parts.append(
                f'<figure style="margin:0 8px 0 0"><img src="{png}" style="max-width:336px" alt="{name}">'
                f'<figcaption style="font-size:85%">{name}</figcaption></figure>'
            )
        return (
            f'<div style="font-size:90%">{html.escape(self.describe(target, source, layer, heat, s))}</div>'
            f'<div style="display:flex;flex-wrap:wrap">{"".join(parts)}</div>{legend_html(s)}'
        )


def _attribution_floor(attribution) -> float | None:
    return getattr(attribution, "noise_floor", None) if attribution is not None else None


def overlay_png(image, pixels: np.ndarray, s: Scale, grid: tuple[int, int] | None = None, max_side: int = 336) -> str:
    """The picture in its own colours under the veil of scale ``s`` (``pixels``: values, image-sized), signed
    values with a rim of their colour, the crop grid drawn when ``grid`` is given: a PNG ``data:`` URL."""
    from PIL import Image

    picture = image.convert("RGB")
    ratio = min(1.0, max_side / max(picture.size))
    size = (max(1, round(picture.width * ratio)), max(1, round(picture.height * ratio)))
    picture = picture.resize(size)
    ys = np.minimum((np.arange(size[1]) / ratio).astype(int), pixels.shape[0] - 1)
    xs = np.minimum((np.arange(size[0]) / ratio).astype(int), pixels.shape[1] - 1)
    values = pixels[ys][:, xs]
    alpha = veil_alpha(s.fraction(values))[..., None]
    veil = np.array([int(VEIL[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    out = np.asarray(picture, dtype=np.float64) * (1 - alpha) + veil * alpha
    if s.kind == "score":  # a two-pixel rim inside each run of cells of one sign, in that sign's colour
        rgb = s.rims(values)
        sign = np.sign(np.nan_to_num(s.fraction(values)))
        edge = np.zeros(values.shape, dtype=bool)
        for axis in (0, 1):
            for shift in (1, 2, -1, -2):
                edge |= np.roll(sign, shift, axis=axis) != sign
        rim = edge & ~np.isnan(rgb[..., 0])
        out[rim] = rgb[rim]
    if grid is not None:
        rows, cols = grid
        for k in range(1, cols):
            out[:, min(size[0] - 1, round(k * size[0] / cols))] = (37, 99, 235)
        for k in range(1, rows):
            out[min(size[1] - 1, round(k * size[1] / rows)), :] = (37, 99, 235)
    buffer = io.BytesIO()
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class PatchExplorer(PhiWidget):
    """The picture, its HD crops and global view, each cell's token, and where each answer token looks.

    Args:
        cache: the :class:`~phi3lab.inspect.cache.Cache` of a vision prompt (``max_new_tokens > 0`` gives one
            target per answer token; a single forward gives the next-token row).
        image: 0-based image index.
        attribution: optional attribution for the same prompt (adds the ``attribution`` source, and the
            explorer opens on it).
    """

    _front = "patches"
    picture = traitlets.Unicode().tag(sync=True)
    geometry = traitlets.Dict().tag(sync=True)
    crop_pos = traitlets.Unicode().tag(sync=True)
    global_pos = traitlets.Unicode().tag(sync=True)
    targets = traitlets.List().tag(sync=True)
    layers = traitlets.List().tag(sync=True)
    sources = traitlets.List().tag(sync=True)
    target = traitlets.Int(0).tag(sync=True)
    source = traitlets.Unicode("attention").tag(sync=True)
    layer = traitlets.Int(-1).tag(sync=True)
    heat_crops = traitlets.Unicode().tag(sync=True)
    heat_global = traitlets.Unicode().tag(sync=True)
    scale = traitlets.Dict().tag(sync=True)
    info = traitlets.Unicode().tag(sync=True)
    offline = traitlets.Dict().tag(sync=True)

    def __init__(self, cache, image: int = 0, attribution=None):
        self.view = PatchView(cache, image, attribution)
        super().__init__(**self.view.initial())
        self.observe(self._update, names=["target", "source", "layer"])

    def _update(self, change) -> None:
        self._refresh(change, lambda: self.view.payload(self.target, self.source, self.layer), {"source": "attention"})

    def show(self, target: int = 0, source: str = "attention", layer: int = -1) -> None:
        """Overlay answer token ``target`` from ``source``, as a click in the browser does."""
        with self.hold_sync():
            self.source, self.layer, self.target = source, layer, target

    def to_text(self) -> str:
        return self.view.to_text(self.target, self.source, self.layer)

    def to_html(self) -> str:
        return self.view.to_html(self.target, self.source, self.layer)
