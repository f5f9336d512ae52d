"""AttributionView: an attribution's words, turns and picture regions coloured by score, per target token.

    >>> import types, torch
    >>> from phi3lab.views.widgets import AttributionView
    >>> words = [types.SimpleNamespace(label=w, image=None) for w in ("What", "is", "2", "plus", "3?")]
    >>> view = AttributionView(types.SimpleNamespace(units=words, target_tokens=["▁5", "<|end|>"],
    ...                                              scores=torch.tensor([[0, 0, 0.9, 0.1, 0.8], [0, 0, 0, 0, 0.1]])))
    >>> view.token, view.targets, view.info
    (0, ['▁5', '<|end|>'], "'▁5': red supports it, blue works against it · one scale ±0.9 for every unit · 2 of 5 units under the noise floor 1.5e-05: no signal")

``AttributionView(phi3lab.attribution.attribute(lab, conversation, images, units=[...]))`` is the usual
way in.

It reads any object with this protocol (what :func:`phi3lab.attribution.attribute` returns):

* ``units``: a list whose items have a ``label`` (and, for picture regions, ``image`` — the
  0-based picture — and ``box``, ``(x0, y0, x1, y1)`` in its pixels; else ``image`` is ``None``);
* ``target_tokens``: the attributed answer's tokens;
* ``scores``: ``[target tokens, units]`` (tensor or array);
* optional ``segments()``: the prompt turn by turn as ``(role, [(text, unit index or None)])``;
* optional ``image_map(image, token)``: ``[height, width]`` scores on picture ``image``'s pixels, with
  ``inputs.images`` giving the pictures (used when the picture units have no ``box``);
* optional ``noise_floor``: the magnitude under which a score is rounding noise (default
  :data:`phi3lab.colours.SCORE_FLOOR`, right for a float32 model).

Colours follow :mod:`phi3lab.colours`: red supports the token, blue works against it, and the
words and the picture regions share **one scale**, the largest |score| of the token's row, drawn with its
numbers.  Scores under the noise floor — and NaN or infinite ones — are drawn uncoloured and called *no
signal*.  The picture keeps its colours: a veil lifts where a region's |score| is high, and a rim gives
each region with signal its sign's colour.  The view opens on the target token with the strongest
attribution ("whole answer" is one click away).

Per chosen token the browser gets one byte per unit (and, for pictures without unit boxes, a grid of at
most 48 × 48 cells); the ``offline`` payload holds every target token's bytes for an exported page.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import traitlets

from phi3lab.colours import VEIL, Scale, encode, legend_html, scale, veil_alpha
from phi3lab.views.widgets._base import OFFLINE_BYTES, PhiWidget, chip, data_url, display_label, spread

__all__ = ["AttributionPayload", "AttributionView", "image_grids"]

MAP_CELLS = 48
LABEL = "attribution (Δ log p)"


def _scores(attribution) -> np.ndarray:
    scores = attribution.scores
    scores = scores.detach().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores)
    return np.asarray(scores, dtype=np.float64)


def _box_means(pixels: np.ndarray, boxes) -> np.ndarray:
    """Mean of ``pixels`` over each ``(x0, y0, x1, y1)`` box (0 for ``None``), via a summed-area table."""
    table = np.zeros((pixels.shape[0] + 1, pixels.shape[1] + 1))
    table[1:, 1:] = pixels.cumsum(0).cumsum(1)
    out = np.zeros(len(boxes))
    for i, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = max(int(np.ceil(box[2])), x0 + 1), max(int(np.ceil(box[3])), y0 + 1)
        x1, y1 = min(x1, pixels.shape[1]), min(y1, pixels.shape[0])
        area = (x1 - x0) * (y1 - y0)
        if area > 0:
            out[i] = (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]) / area
    return out


def image_grids(attribution, image: int, patch_view) -> list[tuple[np.ndarray, np.ndarray]]:
    """An attribution's image map of picture ``image`` on a :class:`~phi3lab.views.widgets.patches.PatchView`'s
    crop and global-view cells, per target token: ``[(crops, global), ...]``.

    Raises:
        ValueError: the attribution has no ``image_map``, or explains another answer than the cache's.
    """
    from phi3lab.prompts.patches import CELLS, image_tokens

    if not callable(getattr(attribution, "image_map", None)):
        raise ValueError(
            f"{type(attribution).__name__} has no image_map(image, token); attribute with image "
            "units (units='image-regions', 'crops' or 'images')"
        )
    answer = list(patch_view.cache.answer_ids)
    target = [int(i) for i in getattr(attribution, "target_ids", answer[: len(attribution.target_tokens)])]
    if answer[: len(target)] != target:
        raise ValueError(
            f"the attribution explains another answer ({attribution.target_tokens}) than this cache's "
            "(run both on the same prompt; the attribution's target is the model's greedy answer)"
        )
    span = patch_view.span
    tokens = image_tokens(span.width, span.height, span.num_crops)
    crop = [t for t in tokens if t.kind == "crop"]
    glob = [t for t in tokens if t.kind == "global"]
    rows, cols = span.layout.grid
    grids = []
    for k in range(len(target)):
        pixels = np.asarray(attribution.image_map(image, token=k), dtype=np.float64)
        c = np.zeros((rows * CELLS, cols * CELLS))
        g = np.zeros((CELLS, CELLS))
        c[[t.row for t in crop], [t.col for t in crop]] = _box_means(pixels, [t.image_box for t in crop])
        g[[t.row for t in glob], [t.col for t in glob]] = _box_means(pixels, [t.image_box for t in glob])
        grids.append((c, g))
    return grids


class AttributionPayload:
    """The values an :class:`AttributionView` sends: text pieces, unit labels, per-token scores, regions."""

    def __init__(self, attribution, floor: float | None = None):
        for name in ("units", "target_tokens", "scores"):
            if not hasattr(attribution, name):
                raise TypeError(
                    f"AttributionView takes an attribution (phi3lab.attribution.attribute(...)); "
                    f"{type(attribution).__name__} has no {name!r}"
                )
        self.attribution = attribution
        self.scores = _scores(attribution)
        units, tokens = list(attribution.units), list(attribution.target_tokens)
        if self.scores.shape != (len(tokens), len(units)):
            raise ValueError(
                f"scores must be [target tokens, units] = [{len(tokens)}, {len(units)}], got {list(self.scores.shape)}"
            )
        if not tokens or not units:
            raise ValueError(
                f"the attribution has {len(tokens)} target token(s) and {len(units)} unit(s); it needs at least one "
                "of each (attribute an answer that has tokens, over units the prompt has)"
            )
        if floor is None:
            floor = getattr(attribution, "noise_floor", None)
        self.floor = floor
        self.labels = [str(getattr(u, "label", u)) for u in units]
        self.targets = [display_label(str(t)) for t in tokens]
        if callable(getattr(attribution, "segments", None)):
            self.segments = [[role, [[text, i] for text, i in pieces]] for role, pieces in attribution.segments()]
        else:
            self.segments = [["units", [[label, i] for i, label in enumerate(self.labels)]]]
        self.images = self._pictures(units)
        self.regions = self._regions(units)

    def _pictures(self, units) -> list[int]:
        spans = getattr(getattr(self.attribution, "inputs", None), "images", ())
        wanted = {getattr(u, "image", None) for u in units} - {None}
        return [s.index for s in spans if s.index in wanted]

    def _regions(self, units) -> dict[int, list[list[float]]]:
        """Per picture, each unit's box as fractions of the picture and the unit's index; ``{}`` for a
        picture whose units have no boxes (its map is sent instead)."""
        spans = {s.index: s for s in getattr(getattr(self.attribution, "inputs", None), "images", ())}
        out: dict[int, list[list[float]]] = {}
        for image in self.images:
            mine = [(i, getattr(u, "box", None)) for i, u in enumerate(units) if getattr(u, "image", None) == image]
            if mine and all(box is not None for _, box in mine):
                w, h = spans[image].width, spans[image].height
                out[image] = [[b[0] / w, b[1] / h, b[2] / w, b[3] / h, i] for i, b in mine]
        return out

    def row(self, token: int) -> np.ndarray:
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not -1 <= token < len(self.targets):
            raise IndexError(
                f"token {token!r} does not exist; choose -1 (the whole answer) or 0..{len(self.targets) - 1}"
            )
        return self.scores.sum(0) if token == -1 else self.scores[token]

    def maps(self, token: int) -> list[np.ndarray]:
        """Each picture without unit boxes: its image map pooled to at most 48 × 48 cells (means)."""
        out = []
        for image in self.images:
            if image in self.regions or not callable(getattr(self.attribution, "image_map", None)):
                continue
            pixels = np.asarray(
                self.attribution.image_map(image, token=None if token == -1 else token), dtype=np.float64
            )
            h, w = pixels.shape
            ny, nx = min(MAP_CELLS, h), min(MAP_CELLS, w)
            ys, xs = np.linspace(0, h, ny + 1).astype(int), np.linspace(0, w, nx + 1).astype(int)
            pooled = np.add.reduceat(np.add.reduceat(pixels, ys[:-1], axis=0), xs[:-1], axis=1)
            out.append(pooled / np.outer(np.diff(ys), np.diff(xs)))
        return out

    def scale(self, token: int, maps: list[np.ndarray] | None = None) -> Scale:
        """The token's one scale: every unit's score (words, turns and regions), and any pooled map."""
        maps = self.maps(token) if maps is None else maps
        return scale(self.row(token), *maps, kind="score", label=LABEL, floor=self.floor)

    def payload(self, token: int) -> dict:
        row = self.row(token)
        maps = self.maps(token)
        s = self.scale(token, maps)
        return {
            "scores": encode(row, s),
            "scale": s.to_json(),
            "maps": [{"shape": list(m.shape), "values": encode(m, s)} for m in maps],
            "info": self.describe(token, s),
        }

    def describe(self, token: int, s: Scale | None = None) -> str:
        row = self.row(token)
        s = s or self.scale(token)
        name = self.name(token)
        bad = int((~np.isfinite(row)).sum())
        broken = f" · {bad} score(s) are NaN or infinite: drawn as no signal" if bad else ""
        if not s.signal:
            return (
                f"{name}: no signal — every |score| is under the noise floor {s.floor:.1e} "
                f"(largest {s.vmax:.1e}){broken}"
            )
        quiet = int(np.isnan(s.fraction(row)).sum()) - bad
        under = f" · {quiet} of {len(row)} units under the noise floor {s.floor:.1e}: no signal" if quiet else ""
        return f"{name}: red supports it, blue works against it · one scale ±{s.vmax:.3g} for every unit{under}{broken}"

    def name(self, token: int) -> str:
        return "the whole answer" if token == -1 else repr(self.targets[token])

    def most_informative(self) -> int:
        """The target token with the strongest attribution (finite scores), or -1 (the whole answer) when no
        token has any signal."""
        peaks = np.nanmax(np.where(np.isfinite(self.scores), np.abs(self.scores), np.nan), axis=1, initial=0.0)
        best = int(np.argmax(peaks))
        return best if self.scale(best).signal else -1

    def offline_payload(self) -> dict:
        """Every target token's bytes (and the whole answer's), within :data:`OFFLINE_BYTES`."""
        tokens = [-1, *range(len(self.targets))]
        first = self.payload(tokens[0])
        each = len(str(first)) + 64
        kept = spread(len(tokens), [0, self.most_informative() + 1], int(OFFLINE_BYTES // each))
        return {
            "tokens": [tokens[k] for k in kept],
            "payloads": {str(tokens[k]): first if k == 0 else self.payload(tokens[k]) for k in kept},
            "cap_bytes": OFFLINE_BYTES,
        }

    def initial(self) -> dict:
        spans = {s.index: s for s in getattr(getattr(self.attribution, "inputs", None), "images", ())}
        pictures = [
            {"image": i + 1, "src": data_url(spans[i].image, 320), "regions": self.regions.get(i, [])}
            for i in self.images
        ]
        token = self.most_informative()
        return {
            "labels": self.labels,
            "targets": self.targets,
            "segments": self.segments,
            "pictures": pictures,
            "method": str(getattr(self.attribution, "method", "")),
            "token": token,
            "offline": self.offline_payload(),
            **self.payload(token),
        }

    def to_text(self, token: int) -> str:
        row = self.row(token)
        s = self.scale(token)
        order = np.argsort(-np.nan_to_num(row, nan=-np.inf), kind="stable")[:8]
        lines = [f"attribution of {self.name(token)}", f"  {s.to_text()}"]
        for i in order:
            quiet = "  (no signal)" if np.isnan(s.fraction(row[i])) else ""
            lines.append(f"{row[i]:>+9.3g}  {self.labels[i]}{quiet}")
        return "\n".join(lines)

    def to_html(self, token: int) -> str:
        row = self.row(token)
        s = self.scale(token)
        colours = s.colours(row)
        turns = []
        for role, pieces in self.segments:
            parts = [f'<b style="opacity:0.7">{html.escape(role)}:</b> ']
            for text, i in pieces:
                if i is None:
                    parts.append(html.escape(text))
                    continue
                title = f"{self.labels[i]}: {row[i]:+.3g}" + (" · no signal" if colours[i] is None else "")
                shown = text if text.strip() else text.replace("\n", "⏎").replace(" ", "␣")  # a unit of white space
                parts.append(chip(shown, colours[i], title))
            turns.append(f"<div>{''.join(parts)}</div>")
        pictures = "".join(self._picture_html(image, token, s) for image in self.images)
        return (
            f"<div>{html.escape(self.describe(token, s))}</div>"
            f"<div style='line-height:1.9'>{''.join(turns)}</div>{pictures}{legend_html(s)}"
        )

    def _picture_html(self, image: int, token: int, s: Scale) -> str:
        """The picture under its veil (regions with their rims), as an inline PNG."""
        from PIL import Image

        spans = {sp.index: sp for sp in self.attribution.inputs.images}
        picture = spans[image].image.convert("RGB")
        ratio = min(1.0, 224 / max(picture.size))
        size = (max(1, round(picture.width * ratio)), max(1, round(picture.height * ratio)))
        pixels = np.asarray(picture.resize(size), dtype=np.float64)
        values = np.full(size[::-1], np.nan)
        row = self.row(token)
        boxes = self.regions.get(image)
        if boxes:
            for x0, y0, x1, y1, i in boxes:
                values[round(y0 * size[1]) : round(y1 * size[1]), round(x0 * size[0]) : round(x1 * size[0])] = row[i]
        elif callable(getattr(self.attribution, "image_map", None)):
            full = np.asarray(self.attribution.image_map(image, token=None if token == -1 else token), dtype=float)
            ys = np.minimum((np.arange(size[1]) / ratio).astype(int), full.shape[0] - 1)
            xs = np.minimum((np.arange(size[0]) / ratio).astype(int), full.shape[1] - 1)
            values = full[ys][:, xs]
        alpha = veil_alpha(s.fraction(values))[..., None]
        veil = np.array([int(VEIL[k : k + 2], 16) for k in (1, 3, 5)], dtype=np.float64)
        out = pixels * (1 - alpha) + veil * alpha
        rgb = s.rims(values)
        edge = np.zeros(values.shape, dtype=bool)
        filled = np.nan_to_num(values, nan=np.inf)
        for axis in (0, 1):
            for shift in (1, 2, -1, -2):
                edge |= np.roll(filled, shift, axis=axis) != filled
        rim = edge & ~np.isnan(rgb[..., 0])
        out[rim] = rgb[rim]
        buffer = io.BytesIO()
        Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        return (
            f'<figure style="display:inline-block;margin:4px"><img alt="image {image + 1}: attribution" '
            f'src="data:image/png;base64,{data}"><figcaption style="font-size:85%">image {image + 1}: veiled where '
            f"its regions have little or no signal, rims in their score's colour</figcaption></figure>"
        )


class AttributionView(PhiWidget):
    """Coloured words and turns (and pictures) of an attribution on one scale; click a target token to switch.

    Args:
        attribution: an :class:`~phi3lab.attribution.Attribution` (or any object with the protocol above).
        floor: the noise floor (default the attribution's ``noise_floor``, else
            :data:`phi3lab.colours.SCORE_FLOOR`).
    """

    _front = "attribution"
    labels = traitlets.List().tag(sync=True)
    targets = traitlets.List().tag(sync=True)
    segments = traitlets.List().tag(sync=True)
    pictures = traitlets.List().tag(sync=True)
    method = traitlets.Unicode().tag(sync=True)
    token = traitlets.Int(-1).tag(sync=True)
    scores = traitlets.Unicode().tag(sync=True)
    scale = traitlets.Dict().tag(sync=True)
    maps = traitlets.List().tag(sync=True)
    info = traitlets.Unicode().tag(sync=True)
    offline = traitlets.Dict().tag(sync=True)

    def __init__(self, attribution, floor: float | None = None):
        self.view = AttributionPayload(attribution, floor)
        super().__init__(**self.view.initial())
        self.observe(
            lambda change: self._refresh(change, lambda: self.view.payload(self.token), {"token": -1}), names=["token"]
        )

    def to_text(self) -> str:
        return self.view.to_text(self.token)

    def to_html(self) -> str:
        return self.view.to_html(self.token)
