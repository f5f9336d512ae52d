"""What every phi3lab widget shares: the front-end files, the wire encodings, the static forms.

The front end lives in the repository's top-level ``widgets/`` folder as plain ES modules and one
stylesheet, run as they are (no bundler).  A widget's module may start with
``import { ... } from "./common.js";``; :func:`module_source` inlines ``common.js`` in place of that
line, because anywidget loads one module from a string and a string has no folder to import from.

Arrays travel as base64 text (values as one byte each on their view's scale — see
:func:`phi3lab.colours.encode` —, ``u32`` positions) inside ordinary JSON traits: a quarter to a
third of the bytes of a JSON list of numbers, and the same in a live kernel, in a notebook's saved
widget state and in an exported page.  Colours are :mod:`phi3lab.colours`' (the browser gets the
stops, the top of the scale and the noise floor with the values).

Each widget also saves an ``offline`` payload in its state, at most :data:`OFFLINE_BYTES` of text: what
an exported page (no kernel) needs to answer hovering and clicking by itself — captured rows at one
byte per value, the strongest chips of each row, rows evenly spaced when there are more than fit.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import os
import re
from pathlib import Path

import anywidget
import numpy as np
import traitlets

from phi3lab.colours import NO_SIGNAL, text_on

__all__ = [
    "front_end_dir",
    "module_source",
    "stylesheet",
    "PhiWidget",
    "u32",
    "data_url",
    "chip",
    "display_label",
    "MessageLog",
    "state_bytes",
    "OFFLINE_BYTES",
    "spread",
    "display_mode",
]

OFFLINE_BYTES = 256 * 1024  # text saved per widget for pages without a kernel (base64 and JSON)
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


def chip(text: str, background: str | None, title: str = "", underline: str | None = None, dashed: bool = True) -> str:
    """One inline token chip for the static forms (the same look as the live strip); ``background=None``
    draws it as *no signal*: uncoloured, with a dashed outline when ``dashed`` (signed scores)."""
    line = f"box-shadow:inset 0 -3px 0 {underline};" if underline else ""
    hover = f' title="{html.escape(title)}"' if title else ""
    if background is None:
        fill = f"border:1px dashed {NO_SIGNAL};" if dashed else "background:#f3f4f6;color:#111827;"
    else:
        fill = f"background:{background};color:{text_on(background)};"
    return (
        f'<span class="phi3lab-chip"{hover} style="{fill}{line}padding:1px 3px 3px;margin:1px;border-radius:3px;'
        f'display:inline-block;font-family:monospace;white-space:pre">{html.escape(text)}</span>'
    )


def spread(total: int, first: list[int], fits: int) -> list[int]:
    """Which of ``range(total)`` to keep when only ``fits`` fit: every index of ``first`` (in order, up to
    ``fits``), then the rest evenly spaced.

    >>> spread(10, [9], 4)
    [0, 4, 8, 9]
    """
    fits = max(0, min(fits, total))
    chosen = list(dict.fromkeys(i for i in first if 0 <= i < total))[:fits]
    rest = [i for i in range(total) if i not in set(chosen)]
    room = fits - len(chosen)
    if room > 0 and rest:
        picks = np.linspace(0, len(rest) - 1, room).round().astype(int)
        chosen += [rest[i] for i in dict.fromkeys(picks.tolist())]
    return sorted(chosen)


_MODES = ("live", "static")
_mode = {"value": os.environ.get("PHI3LAB_WIDGETS", "live").strip().lower() or "live"}


def display_mode(mode: str | None = None) -> str:
    """Get or set how phi3lab's widgets display: ``"live"`` (the interactive widget, with its static forms
    alongside) or ``"static"`` (only the static HTML and text forms — for front ends that cannot load the
    widget's JavaScript, e.g. VS Code or Colab without access to anywidget's CDN).  The environment
    variable ``PHI3LAB_WIDGETS=static`` sets it for a whole kernel.

    >>> display_mode()
    'live'
    """
    if mode is not None:
        if mode not in _MODES:
            raise ValueError(f"display mode must be one of {_MODES}, got {mode!r}")
        _mode["value"] = mode
    if _mode["value"] not in _MODES:
        raise ValueError(f"PHI3LAB_WIDGETS must be 'live' or 'static', got {_mode['value']!r}; fix the variable")
    return _mode["value"]


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
        if display_mode() == "static":
            return {"text/plain": self.to_text(), "text/html": self._repr_html_()}, {}
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
