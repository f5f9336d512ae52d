"""What every phi3lab widget shares: the front-end files, the wire encodings, the static forms.

The front end lives in the repository's top-level ``widgets/`` folder as plain ES modules and one
stylesheet, run as they are (no bundler).  A widget's module may start with
``import { ... } from "./common.js";``; :func:`module_source` inlines ``common.js`` in place of that
line, because anywidget loads one module from a string and a string has no folder to import from.

Arrays travel as base64 text (``u8`` heat, ``u32`` positions) inside ordinary JSON traits: a quarter
to a third of the bytes of a JSON list of numbers, and the same in a live kernel, in a notebook's
saved widget state and in an exported page.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import re
from pathlib import Path

import anywidget
import numpy as np
import traitlets

__all__ = [
    "front_end_dir",
    "module_source",
    "stylesheet",
    "PhiWidget",
    "u8",
    "u32",
    "data_url",
    "HEAT_STOPS",
    "heat_colour",
    "text_colour",
    "MessageLog",
    "state_bytes",
]

# ColorBrewer YlOrBr, light to dark: low heat stays close to the page, high heat stands out in both
# light and dark themes.  The browser receives these stops and interpolates the same way.
HEAT_STOPS = ("#fff7bc", "#fee391", "#fec44f", "#fe9929", "#ec7014", "#cc4c02", "#8c2d04")
DARK_TEXT, LIGHT_TEXT = "#111827", "#ffffff"
_IMPORT = re.compile(r'^import\s*\{[^}]*\}\s*from\s*"\./common\.js";\s*$', re.M)


def front_end_dir() -> Path:
    """The folder of the front-end files: the copy a wheel carries, else ``widgets/`` of the checkout."""
    packaged = Path(__file__).resolve().parent / "_front"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "widgets"


@functools.cache
def module_source(name: str) -> str:
    """The self-contained ES module for ``widgets/<name>.js`` (``common.js`` inlined)."""
    folder = front_end_dir()
    path = folder / f"{name}.js"
    if not path.is_file():
        raise FileNotFoundError(f"the front-end file {path} is missing; reinstall phi3lab or restore widgets/ from git")
    source = path.read_text(encoding="utf-8")
    common = re.sub(r"^export\s+", "", (folder / "common.js").read_text(encoding="utf-8"), flags=re.M)
    return _IMPORT.sub(lambda _: common, source, count=1)


@functools.cache
def stylesheet() -> str:
    return (front_end_dir() / "phi3lab.css").read_text(encoding="utf-8")


def u8(values, vmax: float | None = None) -> tuple[str, float]:
    """Quantise non-negative values to 0..255 of ``vmax`` (default their maximum): ``(base64, vmax)``."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    top = float(v.max()) if vmax is None and v.size else float(vmax or 0.0)
    scaled = np.zeros(v.shape) if top <= 0 else np.clip(np.rint(v / top * 255), 0, 255)
    return base64.b64encode(scaled.astype(np.uint8).tobytes()).decode("ascii"), top


def u32(values) -> str:
    """Little-endian unsigned 32-bit integers as base64 (positions, indices)."""
    return base64.b64encode(np.asarray(values, dtype="<u4").tobytes()).decode("ascii")


def data_url(image, max_side: int = 448, fmt: str = "JPEG") -> str:
    """A PIL image as a ``data:`` URL, shrunk so its longer side is at most ``max_side`` pixels."""
    picture = image.convert("RGB")
    scale = min(1.0, max_side / max(picture.size))
    if scale < 1:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def heat_colour(fraction: float) -> str:
    """The heat colour of ``fraction`` in 0..1, interpolated between :data:`HEAT_STOPS`."""
    f = min(max(float(fraction), 0.0), 1.0) * (len(HEAT_STOPS) - 1)
    i = min(int(f), len(HEAT_STOPS) - 2)
    rgb = _rgb(HEAT_STOPS[i]) * (1 - (f - i)) + _rgb(HEAT_STOPS[i + 1]) * (f - i)
    return "#" + "".join(f"{int(round(c)):02x}" for c in rgb)


def text_colour(background: str) -> str:
    """Dark or white text, whichever reads on ``background`` (relative luminance above 0.4: dark)."""
    r, g, b = _rgb(background) / 255
    return DARK_TEXT if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4 else LIGHT_TEXT


def chip(text: str, background: str, title: str = "", underline: str | None = None) -> str:
    """One inline token chip for the static forms (the same look as the live strip)."""
    line = f"box-shadow:inset 0 -3px 0 {underline};" if underline else ""
    hover = f' title="{html.escape(title)}"' if title else ""
    return (
        f'<span class="phi3lab-chip"{hover} style="background:{background};color:{text_colour(background)};'
        f"{line}padding:1px 3px 3px;margin:1px;border-radius:3px;display:inline-block;"
        f'font-family:monospace;white-space:pre">{html.escape(text)}</span>'
    )


def colour_bar(vmax: float, label: str) -> str:
    stops = ",".join(HEAT_STOPS)
    return (
        f'<div style="display:flex;align-items:center;gap:6px;font-size:85%;margin:4px 0">'
        f'<span>0</span><span style="display:inline-block;width:140px;height:10px;'
        f'background:linear-gradient(90deg,{stops});border-radius:2px"></span>'
        f"<span>{vmax:.3g}</span><span>{html.escape(label)}</span></div>"
    )


def display_label(token: str) -> str:
    """How a vocabulary piece is shown: ``<0x0A>`` as ``⏎``, everything else as the vocabulary has it."""
    return token.replace("<0x0A>", "⏎")


class PhiWidget(anywidget.AnyWidget):
    """Base of phi3lab's widgets: front-end module by name, custom messages by ``type``, static forms.

    Subclasses set ``_front = "<name>"`` (``widgets/<name>.js``), implement :meth:`to_text` and
    :meth:`to_html`, and handle a browser message ``{"type": "x", ...}`` in ``_msg_x(content)``.
    Displaying a widget gives the live view plus ``text/plain`` and ``text/html`` static forms, which
    is what GitHub, nbconvert without widget state, and ``print`` show.
    """

    _front = ""
    error = traitlets.Unicode("").tag(sync=True)

    def __init_subclass__(cls, **kwargs):
        if cls.__dict__.get("_front"):
            cls._esm = module_source(cls._front)
            cls._css = stylesheet()
        super().__init_subclass__(**kwargs)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.on_msg(self._dispatch)

    def _dispatch(self, _widget, content, _buffers) -> None:
        handler = getattr(self, f"_msg_{content.get('type', '')}", None) if isinstance(content, dict) else None
        if handler is None:
            self.error = f"unknown message from the browser: {content!r}"
            return
        try:
            handler(content)
        except Exception as exc:  # shown in the widget; the kernel keeps going
            self.error = f"{type(exc).__name__}: {exc}"

    def _refresh(self, change, compute, fallback: dict) -> None:
        """Recompute the payload after ``change``; on a refusal keep the view, go back to the
        ``fallback`` value of the changed trait (e.g. rollout on a cache without every layer) and say why."""
        try:
            payload = compute()
        except (IndexError, ValueError) as exc:
            name = change["name"]
            if name in fallback and getattr(self, name) != fallback[name]:
                setattr(self, name, fallback[name])
            self.error = str(exc)
            return
        with self.hold_sync():
            self.error = ""
            for name, value in payload.items():
                setattr(self, name, value)

    def to_text(self) -> str:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def to_html(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return f'<div class="phi3lab-static">{self.to_html()}</div>'

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, metadata = bundle
        data = {**data, "text/plain": self.to_text(), "text/html": self._repr_html_()}
        return data, metadata

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_text().splitlines()[0]})"


class MessageLog:
    """What a widget sends to the browser, recorded (for tests and ``benchmarks/widgets.py``).

    ``MessageLog(widget)`` wraps the widget's comm: every state update and custom message is kept
    in :attr:`messages` as sent; :meth:`bytes` is their JSON size.  Works without a kernel.
    """

    def __init__(self, widget):
        self.messages: list[dict] = []
        original = widget.comm.send

        def send(data=None, metadata=None, buffers=None):
            self.messages.append(data)
            return original(data=data, metadata=metadata, buffers=buffers)

        widget.comm.send = send

    def clear(self) -> None:
        self.messages = []

    def bytes(self) -> int:
        import json

        return sum(len(json.dumps(m, separators=(",", ":"))) for m in self.messages)

    def updates(self) -> dict:
        """The trait values sent, merged in order."""
        out: dict = {}
        for m in self.messages:
            if m and m.get("method") == "update":
                out.update(m["state"])
        return out


def state_bytes(widget) -> int:
    """Bytes of the widget's full state as the browser first receives it (JSON)."""
    import json

    return len(json.dumps(widget.get_state(), separators=(",", ":")))
