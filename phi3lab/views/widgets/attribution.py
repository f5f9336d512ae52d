"""AttributionView: an attribution's words, turns and picture regions coloured by score, per target token.

    >>> import types, torch
    >>> from phi3lab.views.widgets import AttributionView
    >>> words = [types.SimpleNamespace(label=w, image=None) for w in ("What", "is", "2", "plus", "3?")]
    >>> view = AttributionView(types.SimpleNamespace(units=words, target_tokens=["▁5", "<|end|>"],
    ...                                              scores=torch.tensor([[0, 0, 0.9, 0.1, 0.8], [0, 0, 0, 0, 0.1]])))
    >>> view.token, view.targets, view.info
    (-1, ['▁5', '<|end|>'], 'the whole answer: red supports it, blue works against it · scale ±0.9')

``AttributionView(phi3lab.attribution.attribute(lab, conversation, images, units=[...]))`` is the usual
way in.

It reads any object with this protocol (what :func:`phi3lab.attribution.attribute` returns):

* ``units``: a list whose items have a ``label`` (and, for picture regions, ``image`` — the
  0-based picture — else ``None``);
* ``target_tokens``: the attributed answer's tokens;
* ``scores``: ``[target tokens, units]`` (tensor or array);
* optional ``segments()``: the prompt turn by turn as ``(role, [(text, unit index or None)])``;
* optional ``image_map(image, token)``: ``[height, width]`` scores on picture ``image``'s pixels, with
  ``inputs.images`` giving the pictures; optional ``to_text()`` / ``to_html(token)`` static forms.

Per chosen token (or the whole answer) the browser gets one score per unit and, per picture, a
grid of at most 48 × 48 cells, each a signed byte; red supports the token, blue works against it.
"""

from __future__ import annotations

import html

import numpy as np
import traitlets

from phi3lab.views.widgets._base import PhiWidget, chip, data_url, display_label

__all__ = ["AttributionPayload", "AttributionView", "image_grids", "s8"]

POSITIVE, NEGATIVE = (220, 38, 38), (37, 99, 235)  # phi3lab.attribution's colours: supports / works against
MAP_CELLS = 48


def s8(values, scale: float) -> str:
    """Signed values as bytes 0..254 around 127 (``scale`` ↦ 254, ``-scale`` ↦ 0), base64."""
    import base64

    v = np.nan_to_num(np.asarray(values, dtype=np.float64))
    q = np.zeros(v.shape) if scale <= 0 else np.clip(np.rint(v / scale * 127), -127, 127)
    return base64.b64encode((q + 127).astype(np.uint8).tobytes()).decode("ascii")


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
    """The values an :class:`AttributionView` sends: text pieces, unit labels, per-token scores and maps."""

    def __init__(self, attribution):
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
        self.labels = [str(getattr(u, "label", u)) for u in units]
        self.targets = [display_label(t) for t in tokens]
        if callable(getattr(attribution, "segments", None)):
            self.segments = [[role, [[text, i] for text, i in pieces]] for role, pieces in attribution.segments()]
        else:
            self.segments = [["units", [[label, i] for i, label in enumerate(self.labels)]]]
        self.images = self._pictures(units)

    def _pictures(self, units) -> list[int]:
        if not callable(getattr(self.attribution, "image_map", None)):
            return []
        spans = getattr(getattr(self.attribution, "inputs", None), "images", ())
        wanted = {getattr(u, "image", None) for u in units} - {None}
        return [s.index for s in spans if s.index in wanted]

    def row(self, token: int) -> np.ndarray:
        if not -1 <= token < len(self.targets):
            raise IndexError(
                f"token {token} does not exist; choose -1 (the whole answer) or 0..{len(self.targets) - 1}"
            )
        return self.scores.sum(0) if token == -1 else self.scores[token]

    def maps(self, token: int) -> list[np.ndarray]:
        """Each picture's image map pooled to at most 48 × 48 cells (means)."""
        out = []
        for image in self.images:
            pixels = np.asarray(
                self.attribution.image_map(image, token=None if token == -1 else token), dtype=np.float64
            )
            h, w = pixels.shape
            ny, nx = min(MAP_CELLS, h), min(MAP_CELLS, w)
            ys, xs = np.linspace(0, h, ny + 1).astype(int), np.linspace(0, w, nx + 1).astype(int)
            pooled = np.add.reduceat(np.add.reduceat(pixels, ys[:-1], axis=0), xs[:-1], axis=1)
            out.append(pooled / np.outer(np.diff(ys), np.diff(xs)))
        return out

    def payload(self, token: int) -> dict:
        row = self.row(token)
        scale = float(np.abs(row).max()) if row.size else 0.0
        maps = self.maps(token)
        map_scale = max((float(np.abs(m).max()) for m in maps), default=0.0)
        return {
            "scores": s8(row, scale),
            "scale": round(scale, 6),
            "map_scale": round(map_scale, 6),
            "maps": [{"shape": list(m.shape), "values": s8(m, map_scale)} for m in maps],
            "info": f"{self.name(token)}: red supports it, blue works against it · scale ±{scale:.3g}",
        }

    def name(self, token: int) -> str:
        return "the whole answer" if token == -1 else repr(self.targets[token])

    def initial(self) -> dict:
        spans = {s.index: s for s in getattr(getattr(self.attribution, "inputs", None), "images", ())}
        pictures = [{"image": i + 1, "src": data_url(spans[i].image, 320)} for i in self.images]
        return {
            "labels": self.labels,
            "targets": self.targets,
            "segments": self.segments,
            "pictures": pictures,
            "method": str(getattr(self.attribution, "method", "")),
            "colours": [list(POSITIVE), list(NEGATIVE)],
            "token": -1,
            **self.payload(-1),
        }

    def to_text(self, token: int) -> str:
        own = getattr(self.attribution, "to_text", None)
        if token == -1 and callable(own):
            return own()
        row = self.row(token)
        best = np.argsort(-row, kind="stable")[:8]
        return f"attribution of {self.name(token)}\n" + "\n".join(f"{row[i]:>+9.3f}  {self.labels[i]}" for i in best)

    def to_html(self, token: int) -> str:
        own = getattr(self.attribution, "to_html", None)
        if callable(own):
            return own(token=None if token == -1 else token)
        row = self.row(token)
        scale = float(np.abs(row).max()) or 1.0
        chips = []
        for label, value in zip(self.labels, row):
            rgb = POSITIVE if value >= 0 else NEGATIVE
            a = min(abs(value) / scale, 1.0)
            mix = tuple(round(255 * (1 - a) + c * a) for c in rgb)
            chips.append(chip(label, "#{:02x}{:02x}{:02x}".format(*mix), f"{value:+.3f}"))
        return f"<div>{html.escape(self.name(token))}</div><div style='line-height:1.9'>{''.join(chips)}</div>"


class AttributionView(PhiWidget):
    """Coloured words and turns (and picture overlays) of an attribution; click a target token to switch.

    Args:
        attribution: an :class:`~phi3lab.attribution.Attribution` (or any object with the protocol above).
    """

    _front = "attribution"
    labels = traitlets.List().tag(sync=True)
    targets = traitlets.List().tag(sync=True)
    segments = traitlets.List().tag(sync=True)
    pictures = traitlets.List().tag(sync=True)
    method = traitlets.Unicode().tag(sync=True)
    colours = traitlets.List().tag(sync=True)
    token = traitlets.Int(-1).tag(sync=True)
    scores = traitlets.Unicode().tag(sync=True)
    scale = traitlets.Float().tag(sync=True)
    maps = traitlets.List().tag(sync=True)
    map_scale = traitlets.Float().tag(sync=True)
    info = traitlets.Unicode().tag(sync=True)

    def __init__(self, attribution):
        self.view = AttributionPayload(attribution)
        super().__init__(**self.view.initial())
        self.observe(
            lambda change: self._refresh(change, lambda: self.view.payload(self.token), {"token": -1}), names=["token"]
        )

    def to_text(self) -> str:
        return self.view.to_text(self.token)

    def to_html(self) -> str:
        return self.view.to_html(self.token)
