"""phi3lab's colour language: one map for shares, one for signed scores, one noise floor, pictures left as they are.

Every matplotlib figure, widget and rich HTML display in phi3lab colours numbers by these rules:

1. **Shares** (attention, rollout: values ≥ 0 that are parts of a whole) use :data:`SEQUENTIAL`, ColorBrewer's
   *YlGn*: pale yellow for a little, dark green for the most.  Lightness falls step by step, so the order reads
   in grey print and to colour-blind eyes (checked by :func:`simulate_cvd` in the tests).
2. **Signed scores** (attributions, patching effects, lens differences) use :data:`DIVERGING`, ColorBrewer's
   *RdBu*: red above zero (supports the target), blue below (works against it), near-white at zero.  The scale
   is always symmetric, ``±max|value|``, so zero sits in the middle of the colour bar.
3. **One scale per view.**  The parts of one view — the words and the image regions of one attribution, the
   crops and the global view of one picture — are coloured against one scale: the largest magnitude among
   all of them.  The scale is always drawn, with its numbers (:func:`legend_html`, matplotlib colour bars).
4. **A noise floor.**  A value whose magnitude is under the view's floor is drawn uncoloured and called
   *no signal* (a signed score also gets a dashed outline, since a tiny score may look like a real one); a view whose largest value is under the floor says so instead of
   stretching noise to full colour.  :func:`noise_floor` derives the floor from the arithmetic that made
   the numbers: ``ulps`` units in the last place of numbers of size ``magnitude`` in ``dtype``.  Scores such as
   Δ log p are differences of log-probabilities computed from logits of size ~16, so the default floor for a
   float32 model is 8 × 2⁻²³ × 16 ≈ 1.5e-5 (:data:`SCORE_FLOOR`); attention shares are probabilities (size 1):
   8 × 2⁻²³ ≈ 9.5e-7 (:data:`SHARE_FLOOR`).  A bfloat16 model's scores need ``noise_floor("bfloat16")`` (1.0).
5. **Pictures keep their own colours.**  Nothing is painted over a picture in a map colour: an overlay
   puts a neutral veil (:data:`VEIL`, up to :data:`VEIL_ALPHA` opaque) over the cells with little or no
   signal and lifts it where the value is high (:func:`veil_alpha`), so the strongest cells show the picture
   exactly as it is — an orange square stays orange.  Signed overlays add a rim around each region in
   its sign's colour (red or blue; :meth:`Scale.rims`).  The veil is one image drawn without smoothing, so cells leave no seams.

Values travel to the browser as one byte each (:func:`encode`): 0 is *no signal*, 1..255 the value on the
scale (shares: 1 = just above the floor, 255 = the top; scores: 128 = zero, 1 = −top, 255 = +top); the
stops, floor and top travel with them (:meth:`Scale.to_json`), and ``widgets/common.js`` draws with them.

    >>> s = scale([0.0, 0.2, 0.8], kind="share", label="share of attention")
    >>> s.vmax, s.colour(0.8) == SEQUENTIAL[-1], s.colour(0.0) is None
    (0.8, True, True)
    >>> d = scale([-2.0, 1.0, 3e-6], kind="score", label="Δ log p")
    >>> d.vmax, d.colour(0.0) is None, d.colour(-2.0) == DIVERGING[0], d.colour(2.0) == DIVERGING[-1]
    (2.0, True, True, True)
    >>> print(scale([2.3e-6, -1e-6], kind="score", label="Δ log p").to_text())
    Δ log p: no signal — every |value| is under the noise floor 1.5e-05 (largest 2.3e-06)
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from collections.abc import Iterable

import numpy as np

__all__ = [
    "SEQUENTIAL",
    "DIVERGING",
    "VEIL",
    "VEIL_ALPHA",
    "NO_SIGNAL",
    "SHARE_FLOOR",
    "SCORE_FLOOR",
    "Scale",
    "scale",
    "sequential",
    "diverging",
    "noise_floor",
    "veil_alpha",
    "encode",
    "legend_html",
    "text_on",
    "colormap",
    "simulate_cvd",
    "delta_e",
    "lightness",
    "tick",
]

# ColorBrewer YlGn (9 classes) without its near-white first class: the faintest signal still has a tint,
# so it never looks like "no signal".
SEQUENTIAL = ("#f7fcb9", "#d9f0a3", "#addd8e", "#78c679", "#41ab5d", "#238443", "#006837", "#004529")
# ColorBrewer RdBu (11 classes), negative (blue) to positive (red), #f7f7f7 at zero.
DIVERGING = (
    "#053061",
    "#2166ac",
    "#4393c3",
    "#92c5de",
    "#d1e5f0",
    "#f7f7f7",
    "#fddbc7",
    "#f4a582",
    "#d6604d",
    "#b2182b",
    "#67001f",
)
VEIL = "#1f2937"  # a neutral dark slate: it darkens a picture without changing its hues
VEIL_ALPHA = 0.55  # the veil's opacity where there is no signal
NO_SIGNAL = "#9ca3af"  # the dashed outline of a value under the noise floor
DARK_TEXT, LIGHT_TEXT = "#111827", "#ffffff"

_EPS = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7, "float64": 2.0**-52}


def noise_floor(dtype="float32", magnitude: float = 16.0, ulps: int = 8) -> float:
    """The smallest magnitude taken as signal: ``ulps`` units in the last place of numbers of size
    ``magnitude`` computed in ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``, ``"float64"`` or a torch
    dtype).

    >>> f"{noise_floor():.2e}", f"{noise_floor(magnitude=1):.2e}", noise_floor("bfloat16")
    ('1.53e-05', '9.54e-07', 1.0)
    """
    name = str(dtype).replace("torch.", "")
    if name not in _EPS:
        raise ValueError(f"dtype must be one of {sorted(_EPS)} (or the torch dtype), got {dtype!r}")
    if not math.isfinite(magnitude) or ulps <= 0:
        raise ValueError(f"magnitude must be finite and ulps positive, got magnitude={magnitude!r}, ulps={ulps!r}")
    return ulps * _EPS[name] * max(abs(float(magnitude)), 1.0)


SHARE_FLOOR = noise_floor("float32", 1.0)
SCORE_FLOOR = noise_floor("float32", 16.0)


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(min(max(c, 0), 255))):02x}" for c in rgb)


def _ramp(stops: tuple[str, ...], fraction: np.ndarray) -> np.ndarray:
    """RGB (0..255) of fractions 0..1 along ``stops``, linear between neighbouring stops."""
    table = np.stack([_rgb(c) for c in stops])
    f = np.clip(np.asarray(fraction, dtype=np.float64), 0, 1) * (len(stops) - 1)
    i = np.minimum(f.astype(int), len(stops) - 2)
    t = (f - i)[..., None]
    return table[i] * (1 - t) + table[i + 1] * t


def _finite(parts: Iterable) -> np.ndarray:
    values = [np.asarray(p, dtype=np.float64).ravel() for p in parts]
    flat = np.concatenate(values) if values else np.zeros(0)
    return flat[np.isfinite(flat)]


@dataclasses.dataclass(frozen=True)
class Scale:
    """How one view colours its numbers.

    Attributes:
        kind: ``"share"`` (sequential, from 0) or ``"score"`` (diverging, symmetric around 0).
        vmax: the top of the scale (for scores: the largest magnitude, so the scale is ``±vmax``).
        floor: magnitudes under it are *no signal*.
        label: what the numbers are, with their unit (e.g. ``"attribution (Δ log p)"``).
    """

    kind: str
    vmax: float
    floor: float
    label: str

    def __repr__(self) -> str:
        return f"Scale({self.kind}, {self.to_text()})"

    @property
    def signal(self) -> bool:
        """Whether anything in the view is over the noise floor."""
        return self.vmax >= self.floor and self.vmax > 0

    @property
    def stops(self) -> tuple[str, ...]:
        return SEQUENTIAL if self.kind == "share" else DIVERGING

    def fraction(self, values) -> np.ndarray:
        """Each value's place on the colour bar: 0..1 for shares, −1..1 for scores; NaN for *no signal*."""
        v = np.asarray(values, dtype=np.float64)
        out = np.full(v.shape, np.nan)
        if not self.signal:
            return out
        ok = np.isfinite(v) & (np.abs(v) >= self.floor)
        if self.kind == "share":
            ok &= v > 0
        out[ok] = np.clip(v[ok] / self.vmax, -1, 1)
        return out

    def rgb(self, values) -> np.ndarray:
        """``[..., 3]`` colours (0..255) of ``values``; *no signal* gives NaN."""
        f = self.fraction(values)
        position = f if self.kind == "share" else (f + 1) / 2
        out = _ramp(self.stops, np.nan_to_num(position))
        out[np.isnan(f)] = np.nan
        return out

    def colour(self, value) -> str | None:
        """The hex colour of one value, ``None`` for *no signal*."""
        rgb = self.rgb(np.array([value]))[0]
        return None if np.isnan(rgb).any() else _hex(rgb)

    def colours(self, values) -> list[str | None]:
        return [None if np.isnan(c).any() else _hex(c) for c in self.rgb(np.asarray(values)).reshape(-1, 3)]

    def rims(self, values) -> np.ndarray:
        """``[..., 3]`` rim colours of signed values on a picture: the strongest colour of each value's sign
        (the veil says how strong it is); NaN for no signal."""
        f = self.fraction(values)
        out = np.full(f.shape + (3,), np.nan)
        out[f > 0] = _rgb(DIVERGING[-2])
        out[f < 0] = _rgb(DIVERGING[1])
        return out

    def ticks(self) -> list[float]:
        """The numbers printed on a colour bar: its ends and its middle."""
        top = self.vmax if self.signal else 0.0
        return [0.0, top / 2, top] if self.kind == "share" else [-top, 0.0, top]

    def to_text(self) -> str:
        """One line: the scale's range and floor, or that there is no signal."""
        if not self.signal:
            return (
                f"{self.label}: no signal — every |value| is under the noise floor {self.floor:.1e} "
                f"(largest {self.vmax:.1e})"
            )
        span = f"0 … {_num(self.vmax)}" if self.kind == "share" else f"−{_num(self.vmax)} … 0 … +{_num(self.vmax)}"
        return f"{self.label}: {span}; under {self.floor:.1e}: no signal"

    __str__ = to_text

    def to_json(self) -> dict:
        """What the browser needs to draw with this scale (see ``widgets/common.js``)."""
        return {
            "kind": self.kind,
            "stops": list(self.stops),
            "vmax": float(self.vmax),
            "floor": float(self.floor),
            "label": self.label,
            "signal": self.signal,
            "veil": VEIL,
            "veil_alpha": VEIL_ALPHA,
            "no_signal": NO_SIGNAL,
        }


def _num(x: float) -> str:
    """A scale number as people read it: 3 significant digits, exponent only for the very small or large."""
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def scale(*parts, kind: str, label: str, floor: float | None = None, vmax: float | None = None) -> Scale:
    """One scale for every part of a view (arrays, lists or numbers; NaN and ±inf are ignored).

    Args:
        parts: the values of each part (e.g. the words' scores and the image regions' scores).
        kind: ``"share"`` or ``"score"``.
        label: what the numbers are, with their unit.
        floor: the noise floor (default :data:`SHARE_FLOOR` or :data:`SCORE_FLOOR`).
        vmax: a fixed top (to compare views side by side); default the largest magnitude in ``parts``.
    """
    if kind not in ("share", "score"):
        raise ValueError(f"kind must be 'share' (sequential) or 'score' (diverging), got {kind!r}")
    floor = (SHARE_FLOOR if kind == "share" else SCORE_FLOOR) if floor is None else float(floor)
    if not (floor >= 0 and math.isfinite(floor)):
        raise ValueError(f"floor must be a finite number ≥ 0, got {floor!r}")
    if vmax is None:
        values = _finite(parts)
        vmax = float(np.abs(values).max()) if values.size else 0.0
    elif not (math.isfinite(vmax) and vmax >= 0):
        raise ValueError(f"vmax must be a finite number ≥ 0, got {vmax!r}")
    return Scale(kind, float(vmax), floor, label)


def sequential(values, *, vmax: float | None = None, floor: float = SHARE_FLOOR) -> list[str | None]:
    """Hex colours of shares on one sequential scale (``None``: no signal).

    >>> sequential([0.0, 1.0])
    [None, '#004529']
    """
    return scale(values, kind="share", label="", floor=floor, vmax=vmax).colours(values)


def diverging(values, *, vmax: float | None = None, floor: float = SCORE_FLOOR) -> list[str | None]:
    """Hex colours of signed scores on one scale centred at zero (``None``: no signal).

    >>> diverging([-1.0, 1e-9, 0.5, 1.0])
    ['#053061', None, '#e58268', '#67001f']
    """
    return scale(values, kind="score", label="", floor=floor, vmax=vmax).colours(values)


def veil_alpha(fraction) -> np.ndarray:
    """The veil's opacity over a picture cell whose value sits at ``fraction`` of the scale (magnitude,
    0..1; NaN for no signal): :data:`VEIL_ALPHA` at 0 and for no signal, clear at the top."""
    f = np.abs(np.asarray(fraction, dtype=np.float64))
    return np.where(np.isnan(f), VEIL_ALPHA, VEIL_ALPHA * (1 - np.clip(np.nan_to_num(f), 0, 1)))


def encode(values, s: Scale) -> str:
    """One byte per value on scale ``s``, base64: 0 no signal; shares 1..255; scores 1..255 around 128.

    >>> import base64
    >>> list(base64.b64decode(encode([0.0, 1e-9, 0.5, 1.0], scale([1.0], kind="share", label=""))))
    [0, 0, 128, 255]
    >>> list(base64.b64decode(encode([-1.0, 0.0, 0.25, 1.0], scale([1.0], kind="score", label=""))))
    [1, 0, 160, 255]
    """
    f = s.fraction(values).ravel()
    out = np.zeros(f.shape, dtype=np.uint8)
    ok = ~np.isnan(f)
    if s.kind == "share":
        out[ok] = np.clip(np.rint(f[ok] * 255), 1, 255)
    else:
        steps = np.maximum(1, np.rint(np.abs(f[ok]) * 127)) * np.sign(f[ok])
        out[ok] = np.clip(128 + steps, 1, 255)
    return base64.b64encode(out.tobytes()).decode("ascii")


def text_on(colour: str) -> str:
    """Dark or white text, whichever reads on ``colour`` (relative luminance over 0.4: dark)."""
    r, g, b = _rgb(colour) / 255
    return DARK_TEXT if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4 else LIGHT_TEXT


def legend_html(s: Scale, width: int = 160) -> str:
    """The scale as inline HTML: the colour bar with its numbers, the floor and the no-signal swatch.

    >>> "no signal" in legend_html(scale([0.3], kind="share", label="share of attention"))
    True
    """
    label = html.escape(s.label)
    edge = f"border:1px dashed {NO_SIGNAL}" if s.kind == "score" else "border:1px solid #d1d5db;background:#f3f4f6"
    swatch = (
        f'<span title="under {s.floor:.1e}: no signal" style="display:inline-block;width:12px;height:10px;'
        f'{edge};border-radius:2px"></span>'
        f'<span style="opacity:0.8">no signal (|v| &lt; {s.floor:.1e})</span>'
    )
    if not s.signal:
        return (
            f'<div class="phi3lab-legend" data-kind="{s.kind}" data-signal="false" style="display:flex;'
            f'align-items:center;gap:6px;font-size:85%;margin:4px 0">{swatch}'
            f"<span>{label}: every value is under the noise floor (largest {s.vmax:.1e})</span></div>"
        )
    ticks = "".join(f"<span>{html.escape(tick(t, s.kind))}</span>" for t in s.ticks())
    return (
        f'<div class="phi3lab-legend" data-kind="{s.kind}" data-signal="true" style="display:flex;'
        f'align-items:center;gap:6px;font-size:85%;margin:4px 0;flex-wrap:wrap">'
        f'<span style="display:inline-flex;flex-direction:column;width:{width}px">'
        f'<span style="height:10px;border-radius:2px;background:linear-gradient(90deg,{",".join(s.stops)})"></span>'
        f'<span style="display:flex;justify-content:space-between">{ticks}</span></span>'
        f"<span>{label}</span>{swatch}</div>"
    )


def tick(x: float, kind: str = "share") -> str:
    """A number as a scale prints it (3 significant digits, a sign on positive scores, a true minus)."""
    return ("+" if kind == "score" and x > 0 else "") + _num(x).replace("-", "−")


def colormap(kind: str):
    """The matplotlib colormap of ``"share"`` or ``"score"`` (imported on call); masked values (no signal)
    are transparent, so the axes' background shows."""
    from matplotlib.colors import LinearSegmentedColormap

    if kind not in ("share", "score"):
        raise ValueError(f"kind must be 'share' or 'score', got {kind!r}")
    stops = SEQUENTIAL if kind == "share" else DIVERGING
    cmap = LinearSegmentedColormap.from_list(f"phi3lab_{kind}", [_rgb(c) / 255 for c in stops], N=256)
    return cmap.with_extremes(bad=(0, 0, 0, 0))


# --- colour-vision checks ------------------------------------------------------------------------

# Machado, Oliveira & Fernandes (2009), severity 1.0, applied to linear RGB.
_CVD = {
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]
    ),
    "tritanopia": np.array(
        [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]
    ),
}


def _linear(rgb: np.ndarray) -> np.ndarray:
    c = rgb / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _srgb(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0, 1)
    return 255 * np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def simulate_cvd(colour: str, deficiency: str) -> str:
    """How ``colour`` looks with ``"protanopia"``, ``"deuteranopia"`` or ``"tritanopia"`` (Machado 2009)."""
    if deficiency not in _CVD:
        raise ValueError(f"deficiency must be one of {sorted(_CVD)}, got {deficiency!r}")
    return _hex(_srgb(_CVD[deficiency] @ _linear(_rgb(colour))))


def _lab(colour: str) -> np.ndarray:
    x, y, z = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ _linear(
        _rgb(colour)
    )
    f = [t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116 for t in (x / 0.95047, y, z / 1.08883)]
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e(a: str, b: str) -> float:
    """CIE76 colour difference of two hex colours (about 2.3 is just noticeable; over 10 plainly different)."""
    return float(np.linalg.norm(_lab(a) - _lab(b)))


def lightness(colour: str) -> float:
    """CIELAB L* of a hex colour (0 black … 100 white)."""
    return float(_lab(colour)[0])
