"""PatchExplorer: a picture with its HD crop grid, each cell's image token, where the answer looks, and
what each cell reads as.

    >>> import phi3lab
    >>> from PIL import Image
    >>> from phi3lab.views.widgets import PatchExplorer
    >>> vision = phi3lab.load("tiny-vision", verbose=False)
    >>> picture = Image.new("RGB", (400, 300), "white")
    >>> _, cache = vision.generate_with_cache("<|image_1|>\\nWhat is this?", [picture], max_new_tokens=2, num_crops=4)
    >>> explorer = PatchExplorer(cache)
    >>> explorer.geometry["grid"], len(explorer.targets) == len(cache.answer_rows), explorer.sources
    ([2, 2], True, ['attention', 'rollout', 'lens'])

Two views of one picture, as Phi-3-vision sees it: the HD canvas cut into 336-pixel crops of 12 × 12
cells (one image token each) and the 12 × 12 global view of the whole canvas.  Hovering a cell names
its token in both views and the value it gets; clicking an answer token shows where the row that
produced it looks (mean attention over the chosen layers, rollout, or — given an attribution — the
attribution's scores on the cells).  Both views share one scale, drawn with its numbers.

**Sinks.**  A few image tokens draw attention whatever is asked (:mod:`phi3lab.inspect.sinks`); the
attention and rollout views mask them by default — the same tokens :meth:`~phi3lab.inspect.cache.Cache.image_heat`
masks — and outline their cells in the neutral grey of the figures (:data:`phi3lab.views.plotting.SINK_OUTLINE`);
a toggle shows them, and a line says how many tokens they are and how much of the row's attention they hold.
Which sinks: ``found=`` (a :class:`~phi3lab.inspect.sinks.Sinks` from ``find_sinks(lab, picture=picture)``,
several questions), else the cache's own (:meth:`~phi3lab.inspect.cache.Cache.sinks`), whose evidence is one
question: that confirms only tokens with massive activations, so on a model without them nothing is masked and
the line says so, naming the candidates the answer merely looks at hard (perhaps the asked-about object).

**The patch lens** (``source="lens"``): each cell's top next token under the logit lens
(:func:`phi3lab.inspect.patch_lens.patch_lens`), printed on the cell for the layer a slider chooses, fainter
where that token is less probable (solid from :data:`~phi3lab.views.widgets.lens_cells.LENS_SURE`; the probability on hover).  It is
computed once, when first asked for, and travels as compact data: a small vocabulary of the pieces that
occur, per layer and cell an index into it and the probability as one byte.  The slider then redraws in
the browser.  When every layer's data would not fit in :data:`~phi3lab.views.widgets._base.OFFLINE_BYTES`
(with the rest of the saved payload), the state holds the chosen layer only and the kernel sends another
when the slider moves; an exported page then shows the saved layer and says so.

The picture keeps its own colours (:mod:`phi3lab.colours`): a neutral veil covers the cells with
little or no signal and lifts where the value is high; signed attributions add a rim of their sign's
colour.  Values under the noise floor count as no signal.  The explorer opens on the most informative
answer token: the one whose attribution on this picture is strongest, or, without an attribution, the
one whose attention on the picture is largest.

The browser gets the picture once (a JPEG of at most 448 pixels a side), the positions of every
cell's token, and per interaction two grids of bytes.  Every position comes from
:func:`phi3lab.prompts.patches.image_tokens`, the one home of the token order.  The ``offline``
payload holds the attention (with the sinks masked and shown) and attribution grids of every answer
token, so an exported page switches between them without a kernel.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
import traitlets

from phi3lab.colours import VEIL, Scale, encode, legend_html, scale, veil_alpha
from phi3lab.inspect.maps import ImageHeat
from phi3lab.prompts.patches import CELLS, image_tokens
from phi3lab.validation import check_int
from phi3lab.views.plotting import SINK_OUTLINE
from phi3lab.views.widgets._base import OFFLINE_BYTES, PhiWidget, data_url, display_label, spread, u32
from phi3lab.views.widgets.attention import check_cache, pattern
from phi3lab.views.widgets.lens_cells import lens_data, lens_html, lens_line

__all__ = ["PatchView", "PatchExplorer", "SOURCES", "SINK_MODES", "check_sinks", "overlay_png"]

SOURCES = ("attention", "rollout", "attribution", "lens")
SINK_MODES = ("mask", "show")
_SINKED = ("attention", "rollout")  # the sources whose sinks are masked or shown


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


def _lens_blocker(cache, span) -> str | None:
    """Why the patch lens cannot be read from ``cache`` (``None`` when it can)."""
    if "resid_post" not in cache.sites:
        return (
            "the patch lens reads resid_post, and this cache did not keep it: run with the default sites "
            "(or sites=[..., 'resid_post'])"
        )
    kept = set(cache.positions)
    if any(p not in kept for p in range(span.start, span.end)):
        return "the patch lens needs every image position, and this cache kept only some: run with positions='all'"
    return None


def _share(x: float) -> str:
    return f"{x:.3f}" if x >= 5e-4 or x == 0 else f"{x:.1e}"


class PatchView:
    """The patch explorer's computations for one image of a cache.

    Args:
        cache: a :class:`~phi3lab.inspect.cache.Cache` of a Phi-3-vision prompt with images.
        image: 0-based image index.
        attribution: optional; an object with ``target_tokens`` and ``image_map(image)`` (see
            :mod:`phi3lab.views.widgets.attribution`) whose maps become the ``"attribution"`` source.
        found: the sinks to mask or show: a :class:`~phi3lab.inspect.sinks.Sinks` of this picture (default
            the cache's own, from one question: see :meth:`~phi3lab.inspect.cache.Cache.sinks`).

    Raises:
        TypeError: not a Cache. ValueError: no captured attention, no image (a text model), or ``found``
            not the sinks of this picture.
        IndexError: ``image`` out of range (the message lists the images there are).
    """

    def __init__(self, cache, image: int = 0, attribution=None, found=None):
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
        self.sinks = _sinks_of(cache, image, found)  # the same sinks cache.image_heat(image, found=found) masks
        self.sink_pos = np.array([span.start + i for i in self.sinks.indices], dtype=np.int64)
        self.lens_blocker = _lens_blocker(cache, span)
        self._lens = None  # the PatchLens, read once when first asked for
        self.sources = (
            ["attention", "rollout"]
            + (["attribution"] if self._maps is not None else [])
            + (["lens"] if self.lens_blocker is None else [])
        )
        self.floor = _attribution_floor(attribution)
        self._offline: dict | None = None

    # --- one target -----------------------------------------------------------------------------

    def row_values(self, target: int, source: str = "attention", layer: int = -1) -> np.ndarray:
        """Values over every key position for one answer token (index into :attr:`targets`), sinks included."""
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
        if source in ("attribution", "lens"):
            raise ValueError(f"the {source} source gives grids, not key rows; use grids() or lens()")
        raise ValueError(f"source must be one of {self.sources}, got {source!r}")

    def grids(self, target: int, source: str = "attention", layer: int = -1, sinks: str = "mask") -> ImageHeat:
        """The chosen source on this image's crop and global-view grids, as an :class:`ImageHeat`;
        attention and rollout with the picture's sinks masked (``sinks="mask"``) or kept (``"show"``)."""
        span = self.span
        sinks = check_sinks(sinks)
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
        masked = sinks == "mask" and len(self.sink_pos) > 0
        mass = float(pad[self.sink_pos].sum()) if masked else 0.0
        if masked:
            pad[self.sink_pos] = 0.0
        return ImageHeat(
            pad[self.crop_pos],
            pad[self.global_pos],
            float(pad[self.separator_pos].sum()),
            span.width,
            span.height,
            span.num_crops,
            tuple(self.sinks.indices),
            masked,
            mass,
            tuple(self.sinks.candidates),
            self.sinks.evidence,
        )

    def scale_of(self, heat: ImageHeat, source: str) -> Scale:
        """One scale for both views: shares for attention and rollout, signed scores for an attribution."""
        if source == "attribution":
            return scale(heat.crops, heat.global_view, kind="score", label="attribution (Δ log p)", floor=self.floor)
        label = "rolled-out attention" if source == "rollout" else "share of attention"
        return scale(heat.crops, heat.global_view, kind="share", label=f"{label} per cell")

    def payload(self, target: int, source: str = "attention", layer: int = -1, sinks: str = "mask") -> dict:
        """What the browser needs to draw ``source`` for answer token ``target`` (not the lens: :meth:`lens_state`)."""
        if source == "lens":
            raise ValueError("the lens is drawn from lens_state(), not payload()")
        heat = self.grids(target, source, layer, sinks)
        s = self.scale_of(heat, source)
        return {
            "heat_crops": encode(heat.crops, s),
            "heat_global": encode(heat.global_view, s),
            "scale": s.to_json(),
            "info": self.describe(target, source, layer, heat, s),
            "sink_info": self.sink_line(target, source, layer, sinks),
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

    # --- attention sinks --------------------------------------------------------------------------

    def sink_cells(self) -> dict:
        """The sinks' cells (indices into the row-major crop and global grids), for the outlines."""
        crops, glob, other = [], [], 0
        for i in self.sinks.indices:
            t = self.sinks.tokens[i]
            if t.kind == "crop":
                crops.append(t.row * self.crop_pos.shape[1] + t.col)
            elif t.kind == "global":
                glob.append(t.row * CELLS + t.col)
            else:
                other += 1
        return {"crops": crops, "global": glob, "separators": other, "colour": SINK_OUTLINE}

    def sink_line(self, target: int, source: str = "attention", layer: int = -1, sinks: str = "mask") -> str:
        """One line: how many sink tokens, masked or shown, and how much of this row's attention they hold."""
        found = self.sinks
        rule = found.rule
        if not found.indices and found.candidates:
            k = len(found.candidates)
            return (
                f"sinks: none masked — the evidence is one question ({found.evidence}), and a sink draws attention "
                f"whatever is asked; {k} candidate token{'s' if k != 1 else ''} this answer looks at hard "
                f"{'are' if k != 1 else 'is'} drawn as {'they are' if k != 1 else 'it is'} (perhaps what the "
                "question asks about): PatchExplorer(cache, found=find_sinks(lab, picture=picture)) masks sinks "
                "found across questions"
            )
        if not found.indices:
            return f"sinks: none on this picture ({rule})"
        cells = self.sink_cells()
        n_cells = len(cells["crops"]) + len(cells["global"])
        where = f"{n_cells} cell{'s' if n_cells != 1 else ''} outlined" + (
            f", {cells['separators']} separator{'s' if cells['separators'] != 1 else ''}" if cells["separators"] else ""
        )
        count = f"{len(found)} sink token{'s' if len(found) != 1 else ''} ({where})"
        if source not in _SINKED:
            return f"sinks: {count} found in the attention; the {source} is drawn as it is ({rule})"
        mass = float(self.row_values(target, source, layer)[self.sink_pos].sum())
        held = f"holding {_share(mass)} of this row's {'rolled-out ' if source == 'rollout' else ''}attention"
        state = "masked" if check_sinks(sinks) == "mask" else "shown"
        return f"sinks: {count} {state}, {held} ({rule})"

    # --- the patch lens ---------------------------------------------------------------------------

    def lens(self):
        """The :class:`~phi3lab.inspect.patch_lens.PatchLens` of this picture, read once."""
        if self.lens_blocker is not None:
            raise ValueError(self.lens_blocker)
        if self._lens is None:
            from phi3lab.inspect.patch_lens import patch_lens

            self._lens = patch_lens(self.cache, self.span.index)
        return self._lens

    def lens_layer(self, layer: int) -> int:
        """``layer`` as a layer number of the lens (negative numbers count from the last), checked."""
        layer = check_int("lens_layer", layer)
        layers = self.layers
        if -len(layers) <= layer < 0:
            return layers[layer]
        if layer not in layers:
            raise IndexError(
                f"lens_layer {layer} is not a layer the patch lens reads; it reads layers {layers} "
                f"(pass one of them, or -1 for the last)"
            )
        return layer

    def _cells(self) -> np.ndarray:
        """Run indices of the cells in the order the browser draws them: the crop grid, then the global view."""
        return np.concatenate([self.crop_pos.reshape(-1), self.global_pos.reshape(-1)]) - self.span.start

    def lens_line(self, layer: int) -> str:
        """One line: the lens's most-read pieces at ``layer`` over both views."""
        return lens_line(self.lens(), self._cells(), self.lens_layer(layer))

    def lens_state(self, layer: int, room: int | None = None) -> dict:
        """The lens as the browser draws it (:func:`~phi3lab.views.widgets.lens_cells.lens_data`): every layer
        when it fits in ``room`` bytes (default what the offline payload leaves of :data:`OFFLINE_BYTES`),
        else ``layer`` only."""
        layer = self.lens_layer(layer)
        room = (OFFLINE_BYTES - _json_bytes(self.offline_payload())) if room is None else room
        lens = self.lens()
        state = lens_data(lens, self._cells(), list(lens.layers))
        return state if _json_bytes(state) <= room else lens_data(lens, self._cells(), [layer])

    # --- the whole widget -------------------------------------------------------------------------

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
        """The attention (sinks masked, and shown under ``shown``) and attribution grids of every answer token,
        for a page without a kernel (made once)."""
        if self._offline is not None:
            return self._offline
        per = {}
        sources = [s for s in ("attention", "attribution") if s in self.sources]
        cells = self.crop_pos.size + self.global_pos.size
        each = cells * 4 / 3 + 900  # base64 of two grids, the scale and the info and sinks lines
        grids = len(sources) + (1 if self.sinks.indices else 0)
        kept = spread(len(self.targets), [self.most_informative()], int(OFFLINE_BYTES // (each * grids)))
        for source in sources:
            have = len(self._maps) if source == "attribution" else len(self.targets)
            per[source] = {str(t): self.payload(t, source) for t in kept if t < have}
        shown = {str(t): self.payload(t, "attention", sinks="show") for t in kept} if self.sinks.indices else {}
        self._offline = {
            "targets": kept,
            "sources": sources,
            "payloads": per,
            "shown": shown,
            "cap_bytes": OFFLINE_BYTES,
        }
        return self._offline

    def initial(self, source: str | None = None, lens_layer: int = -1, sinks: str = "mask") -> dict:
        span = self.span
        layout = span.layout
        target = self.most_informative()
        source = ("attribution" if self._maps is not None else "attention") if source is None else source
        if source not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
        if source not in self.sources:
            why = self.lens_blocker if source == "lens" else "pass PatchExplorer(cache, attribution=...)"
            raise ValueError(f"source {source!r} is not available here: {why}")
        sinks = check_sinks(sinks)
        layer = self.lens_layer(lens_layer)
        shown = "attention" if source == "lens" else source
        state = {
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
            "sinks": sinks,
            "sink_cells": self.sink_cells(),
            "lens_layer": layer,
            "offline": self.offline_payload(),
            **self.payload(target, shown, sinks=sinks),
        }
        if source == "lens":
            state["lens"] = self.lens_state(layer)
            state["info"] = self.lens_line(layer)
        return state

    def to_text(
        self, target: int, source: str = "attention", layer: int = -1, sinks: str = "mask", lens_layer: int = -1
    ) -> str:
        if source == "lens":
            k = self.lens_layer(lens_layer)
            return "\n".join([self.lens_line(k), self.lens().to_text(k, "global")])
        heat = self.grids(target, source, layer, sinks)
        lines = [
            self.describe(target, source, layer, heat),
            self.scale_of(heat, source).to_text(),
            heat.to_text(),
            self.sink_line(target, source, layer, sinks),
        ]
        if self._lens is not None:
            lines.append(self.lens_line(lens_layer))
        return "\n".join(lines)

    def to_html(
        self, target: int, source: str = "attention", layer: int = -1, sinks: str = "mask", lens_layer: int = -1
    ) -> str:
        if source == "lens":
            layer = self.lens_layer(lens_layer)
            grids = (("HD crops", self.crop_pos), ("global view", self.global_pos))
            span = self.span
            veiled = overlay_png(span.image, np.zeros((span.height, span.width)), scale([0.0], kind="share", label=""))
            return lens_html(self.lens(), span, grids, layer, self.lens_line(layer), veiled)
        heat = self.grids(target, source, layer, sinks)
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
            f'<div style="font-size:85%;opacity:0.8">{html.escape(self.sink_line(target, source, layer, sinks))}</div>'
        )


def _sinks_of(cache, image: int, found):
    """``found`` checked against picture ``image`` of ``cache``, or the cache's own sinks."""
    from phi3lab.inspect.sinks import Sinks

    if found is None:
        return cache.sinks(image)
    if not isinstance(found, Sinks):
        raise ValueError(
            f"found must be a Sinks from find_sinks(...) (e.g. find_sinks(lab, picture=picture)), got "
            f"{type(found).__name__}"
        )
    return found.check(cache.inputs.image(image))


def check_sinks(sinks) -> str:
    """``"mask"`` or ``"show"``, or a ValueError that names them."""
    if sinks not in SINK_MODES:
        raise ValueError(
            f"sinks must be 'mask' (the default: the picture's attention sinks masked and outlined) or 'show' "
            f"(kept, still outlined), got {sinks!r}"
        )
    return sinks


def _json_bytes(value) -> int:
    return len(json.dumps(value, separators=(",", ":")))


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
    """The picture, its HD crops and global view, each cell's token, where each answer token looks, and what
    each cell reads as (the patch lens).

    Args:
        cache: the :class:`~phi3lab.inspect.cache.Cache` of a vision prompt (``max_new_tokens > 0`` gives one
            target per answer token; a single forward gives the next-token row).
        image: 0-based image index.
        attribution: optional attribution for the same prompt (adds the ``attribution`` source, and the
            explorer opens on it).
        source: the source to open on (default the attribution if given, else attention); ``"lens"`` reads
            the patch lens at once, so a saved notebook's page shows it.
        lens_layer: the lens's layer (negative counts from the last; default the last).
        sinks: ``"mask"`` (default; as :meth:`~phi3lab.inspect.cache.Cache.image_heat`) or ``"show"``.
        found: which sinks: a :class:`~phi3lab.inspect.sinks.Sinks` of this picture, e.g.
            ``find_sinks(lab, picture=picture)`` over several questions (default the cache's own, from one
            question, which masks only tokens with massive activations; the line under the picture says so).

    Raises:
        ValueError: an unknown ``source`` or ``sinks``, a source the cache cannot give (the lens needs
            ``resid_post`` at every image position), or ``found`` not the sinks of this picture.
            IndexError: ``lens_layer`` not a layer of the cache.
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
    sinks = traitlets.Unicode("mask").tag(sync=True)
    sink_cells = traitlets.Dict().tag(sync=True)
    sink_info = traitlets.Unicode().tag(sync=True)
    lens = traitlets.Dict().tag(sync=True)
    lens_layer = traitlets.Int(-1).tag(sync=True)
    heat_crops = traitlets.Unicode().tag(sync=True)
    heat_global = traitlets.Unicode().tag(sync=True)
    scale = traitlets.Dict().tag(sync=True)
    info = traitlets.Unicode().tag(sync=True)
    offline = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        cache,
        image: int = 0,
        attribution=None,
        *,
        source: str | None = None,
        lens_layer: int = -1,
        sinks="mask",
        found=None,
    ):
        self.view = PatchView(cache, image, attribution, found)
        super().__init__(**self.view.initial(source, lens_layer, sinks))
        self.observe(self._update, names=["target", "source", "layer", "sinks", "lens_layer"])

    def _update(self, change) -> None:
        name = change["name"]
        fallback = {"lens_layer": change["old"]} if name == "lens_layer" else {"source": "attention", "sinks": "mask"}
        self._refresh(change, self._payload, fallback)

    def _payload(self) -> dict:
        if self.source != "lens":
            return self.view.payload(self.target, self.source, self.layer, self.sinks)
        layer = self.view.lens_layer(self.lens_layer)
        out = {"info": self.view.lens_line(layer)}
        if layer not in self.lens.get("held", ()):
            out["lens"] = self.view.lens_state(layer)
        if layer != self.lens_layer:
            out["lens_layer"] = layer
        return out

    def show(self, target: int = 0, source: str = "attention", layer: int = -1, *, sinks=None, lens_layer=None) -> None:
        """Overlay answer token ``target`` from ``source``, as a click in the browser does (``sinks`` and
        ``lens_layer`` as the toggle and the slider; ``None`` keeps them)."""
        with self.hold_sync():
            if sinks is not None:
                self.sinks = sinks
            if lens_layer is not None:
                self.lens_layer = lens_layer
            self.source, self.layer, self.target = source, layer, target

    def to_text(self) -> str:
        return self.view.to_text(self.target, self.source, self.layer, self.sinks, self.lens_layer)

    def to_html(self) -> str:
        return self.view.to_html(self.target, self.source, self.layer, self.sinks, self.lens_layer)
