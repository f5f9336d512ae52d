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
its token in both views and the attention it gets; clicking an answer token overlays where the row
that produced it looks (mean attention over the chosen layers, rollout, or — given an attribution —
the attribution's image map), each view with its own colour scale.

The browser gets the picture once (a JPEG of at most 448 pixels a side), the positions of every
cell's token, and per interaction two grids of bytes.  Every position comes from
:func:`phi3lab.prompts.patches.image_tokens`, the one home of the token order.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import traitlets

from phi3lab.inspect.maps import ImageHeat
from phi3lab.prompts.patches import CELLS, image_tokens
from phi3lab.views.widgets._base import HEAT_STOPS, PhiWidget, _rgb, colour_bar, data_url, display_label, u8, u32
from phi3lab.views.widgets.attention import check_cache

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
        per_layer = [cache.attention(layer)[0][:, self.rows].float().numpy() for layer in self.layers]
        self._weights = np.ascontiguousarray(np.stack(per_layer).transpose(2, 0, 1, 3))
        self._rollout: np.ndarray | None = None
        self.attribution = attribution
        self._maps = None
        if attribution is not None:
            from phi3lab.views.widgets.attribution import image_grids

            self._maps = image_grids(attribution, image, self)
        self.sources = ["attention", "rollout"] + (["attribution"] if self._maps is not None else [])

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

    def payload(self, target: int, source: str = "attention", layer: int = -1) -> dict:
        heat = self.grids(target, source, layer)
        crops, crops_max = u8(np.abs(heat.crops))
        glob, glob_max = u8(np.abs(heat.global_view))
        return {
            "heat_crops": crops,
            "vmax_crops": round(crops_max, 6),
            "heat_global": glob,
            "vmax_global": round(glob_max, 6),
            "info": self.describe(target, source, layer, heat),
        }

    def describe(self, target: int, source: str, layer: int, heat: ImageHeat | None = None) -> str:
        label, row = self.targets[target]
        what = {
            "attention": f"mean attention over {'layer ' + str(layer) if layer != -1 else 'every layer'}, all heads",
            "rollout": "attention rollout",
            "attribution": "attribution",
        }[source]
        text = f"{label!r} (row {self.cache.positions[row]}): {what}"
        if heat is not None and source != "attribution":
            text += (
                f" · on this image {heat.total:.3f} of the row (crops {heat.crops.sum():.3f}, "
                f"global view {heat.global_view.sum():.3f})"
            )
        return text

    def initial(self) -> dict:
        span = self.span
        layout = span.layout
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
            "palette": list(HEAT_STOPS),
            "target": 0,
            "source": "attention",
            "layer": -1,
            **self.payload(0),
        }

    def to_text(self, target: int, source: str = "attention", layer: int = -1) -> str:
        return self.describe(target, source, layer) + "\n" + self.grids(target, source, layer).to_text()

    def to_html(self, target: int, source: str = "attention", layer: int = -1) -> str:
        heat = self.grids(target, source, layer)
        parts = []
        for view, name in (("crops", "HD crops"), ("global", "global view")):
            grid = np.abs(heat.crops if view == "crops" else heat.global_view)
            png = overlay_png(
                self.span.image,
                np.abs(heat.to_pixels(view)),
                float(grid.max()),
                self.span.layout.grid if view == "crops" else None,
            )
            parts.append(
                f'<figure style="margin:0 8px 0 0"><img src="{png}" style="max-width:336px" alt="{name}">'
                f'<figcaption style="font-size:85%">{name}{colour_bar(float(grid.max()), "")}'
                f"</figcaption></figure>"
            )
        return (
            f'<div style="font-size:90%">{html.escape(self.describe(target, source, layer, heat))}</div>'
            f'<div style="display:flex;flex-wrap:wrap">{"".join(parts)}</div>'
        )


def overlay_png(
    image, pixels: np.ndarray, vmax: float, grid: tuple[int, int] | None = None, max_side: int = 336
) -> str:
    """The picture under a translucent heat (``pixels``, image-sized) as a PNG ``data:`` URL, with the
    crop grid drawn when ``grid`` is given (static forms)."""
    from PIL import Image

    picture = image.convert("RGB")
    scale = min(1.0, max_side / max(picture.size))
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size)
    ys = np.minimum((np.arange(size[1]) / scale).astype(int), pixels.shape[0] - 1)
    xs = np.minimum((np.arange(size[0]) / scale).astype(int), pixels.shape[1] - 1)
    frac = np.clip(pixels[ys][:, xs] / vmax, 0, 1) if vmax > 0 else np.zeros((size[1], size[0]))
    stops = np.stack([_rgb(c) for c in HEAT_STOPS])
    f = frac * (len(HEAT_STOPS) - 1)
    i = np.minimum(f.astype(int), len(HEAT_STOPS) - 2)
    colour = stops[i] * (1 - (f - i))[..., None] + stops[i + 1] * (f - i)[..., None]
    alpha = (0.15 + 0.6 * frac)[..., None] * (frac > 0)[..., None]
    out = np.asarray(picture, dtype=np.float64) * (1 - alpha) + colour * alpha
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
        attribution: optional attribution for the same prompt (adds the ``attribution`` source).
    """

    _front = "patches"
    picture = traitlets.Unicode().tag(sync=True)
    geometry = traitlets.Dict().tag(sync=True)
    crop_pos = traitlets.Unicode().tag(sync=True)
    global_pos = traitlets.Unicode().tag(sync=True)
    targets = traitlets.List().tag(sync=True)
    layers = traitlets.List().tag(sync=True)
    sources = traitlets.List().tag(sync=True)
    palette = traitlets.List().tag(sync=True)
    target = traitlets.Int(0).tag(sync=True)
    source = traitlets.Unicode("attention").tag(sync=True)
    layer = traitlets.Int(-1).tag(sync=True)
    heat_crops = traitlets.Unicode().tag(sync=True)
    heat_global = traitlets.Unicode().tag(sync=True)
    vmax_crops = traitlets.Float().tag(sync=True)
    vmax_global = traitlets.Float().tag(sync=True)
    info = traitlets.Unicode().tag(sync=True)

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
