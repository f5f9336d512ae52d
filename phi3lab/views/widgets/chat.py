"""ChatWidget: a chat box over a :class:`~phi3lab.runtime.generation.ChatSession`, streaming as tokens come.

    >>> import phi3lab
    >>> from phi3lab.views.widgets import ChatWidget
    >>> box = ChatWidget(phi3lab.load("tiny", verbose=False), max_new_tokens=6)
    >>> box.ask("What is 2 plus 3?")
    >>> [m["role"] for m in box.messages], [m["role"] for m in box.session.history]
    (['user', 'assistant'], ['user', 'assistant'])

Each turn goes through the session's own ``chat`` (same template, stop ids, validation and
history as ``lab.session()``), on a worker thread so the kernel keeps reading the browser's
messages: the stop button sets the ``stop`` event that ``chat`` checks after every token.  The
tokens reach the browser (through ``chat``'s ``on_text``) as small ``delta`` messages while they
are produced; the finished turn (with :meth:`~phi3lab.runtime.generation.ChatResult.stats`, which ends in
``stopped`` when Stop ended it) lands in the ``messages`` trait, which is what a saved notebook keeps.

A user bubble shows what was typed: attached pictures as thumbnails labelled ``image N`` (the tags the
model gets, ``<|image_N|>``, stay in :attr:`ChatWidget.history`).  Everything the static HTML form writes
is escaped, and only ``data:image/…`` URLs become pictures.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import threading

import traitlets

from phi3lab.validation import check_float, check_int, check_text
from phi3lab.views.widgets._base import PhiWidget, data_url

__all__ = ["ChatWidget"]

_TAG = re.compile(r"<\|image_(\d+)\|>")
_PICTURE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]*$")
COLOURS = {"user": "#bfdbfe", "assistant": "#bbf7d0", "system": "#e9d5ff"}


def _option(check, name: str, value, example: str, **bounds):
    """``check(name, value, **bounds)`` with the fix named in the message."""
    try:
        return check(name, value, **bounds)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"ChatWidget: {exc}; pass e.g. ChatWidget(lab, {name}={example})") from None


class ChatWidget(PhiWidget):
    """A chat box for a loaded model: streaming answers, stop, system prompt, temperature, images.

    Args:
        lab: a :class:`~phi3lab.Lab` from :func:`phi3lab.load`.
        system: system prompt for the first conversation (editable until the first turn; "New chat"
            starts over with whatever it says then).
        temperature: 0 decodes greedily.
        max_new_tokens: upper bound per answer.

    Attributes:
        session: the :class:`~phi3lab.runtime.generation.ChatSession` that holds the history.
    """

    _front = "chat"
    model_name = traitlets.Unicode().tag(sync=True)
    vision = traitlets.Bool(False).tag(sync=True)
    system = traitlets.Unicode("").tag(sync=True)
    temperature = traitlets.Float(0.0).tag(sync=True)
    max_new_tokens = traitlets.Int(128).tag(sync=True)
    messages = traitlets.List().tag(sync=True)
    pending = traitlets.List().tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)

    def __init__(self, lab, system: str = "", temperature: float = 0.0, max_new_tokens: int = 128):
        from phi3lab.runtime.lab import Lab

        if not isinstance(lab, Lab):
            raise TypeError(f"ChatWidget takes the Lab of phi3lab.load(...), got {type(lab).__name__}")
        system = _option(check_text, "system", "" if system is None else system, "'Answer briefly.'")
        temperature = _option(check_float, "temperature", temperature, "0.7", minimum=0.0)
        context = int(getattr(lab.spec, "context_length", 0) or 0) or None
        max_new_tokens = _option(check_int, "max_new_tokens", max_new_tokens, "128", minimum=1, maximum=context)
        self._lab = lab
        self._stop = threading.Event()
        self._images: list = []
        self._worker: threading.Thread | None = None
        super().__init__(
            model_name=lab.spec.name,
            vision=lab.spec.modality == "vision",
            system=system,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )
        self.session = self._lab.session(system=system or None)

    # --- turns ----------------------------------------------------------------------------------

    def ask(self, text: str, images=None, wait: bool = True) -> None:
        """Send a user turn, as the Send button does; ``wait=False`` returns while it streams."""
        for image in images or ():
            self.attach(image)
        self._msg_send({"text": text})
        if wait:
            self.wait()

    def attach(self, image, name: str = "image") -> None:
        """Attach a picture (PIL image, array or path) to the next turn (vision models)."""
        from phi3lab.prompts.images import to_rgb

        if not self.vision:
            raise ValueError(
                f"{self.model_name} is a text model and takes no images; load a vision model "
                "(phi3lab.load('tiny-vision')) to chat about pictures"
            )
        picture = to_rgb(image)
        self._images.append(picture)
        self.pending = [*self.pending, {"name": name, "thumb": data_url(picture, 96)}]

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current answer is finished."""
        if self._worker is not None:
            self._worker.join(timeout)

    def stop(self) -> None:
        """Stop the answer being generated (the Stop button)."""
        self._stop.set()

    def reset(self) -> None:
        """Start a new conversation with the current system prompt (the New chat button)."""
        if self.busy:
            self.error = "wait for the answer (or press Stop) before starting a new chat"
            return
        self.session = self._lab.session(system=self.system or None)
        self._images = []
        with self.hold_sync():
            self.messages, self.pending, self.error = [], [], ""

    @property
    def history(self) -> list[dict]:
        return self.session.history

    @traitlets.validate("max_new_tokens")
    def _valid_tokens(self, proposal):
        value = proposal["value"]
        if value < 1:
            raise traitlets.TraitError(f"max_new_tokens must be at least 1, got {value}")
        return value

    @traitlets.validate("temperature")
    def _valid_temperature(self, proposal):
        value = proposal["value"]
        if not math.isfinite(value) or value < 0:
            raise traitlets.TraitError(f"temperature must be a finite number ≥ 0 (0: greedy), got {value}")
        return value

    def _msg_send(self, content: dict) -> None:
        text = content.get("text")
        if not isinstance(text, str):
            self.error = f"the message must be text, got {type(text).__name__}: type a message and press Send"
            return
        text = text.strip()
        if self.busy:
            self.error = "an answer is still being generated; press Stop first"
            return
        if not text:
            self.error = "type a message first"
            return
        if not self.messages:  # a first turn takes the system prompt as it reads now
            self.session = self._lab.session(system=self.system or None)
        images, self._images = self._images, []
        shown = _TAG.sub(lambda m: f"[image {m.group(1)}]", text)  # the bubble: what was typed, no raw tags
        first = len(self.session.images) + 1
        if images and not _TAG.search(text):  # number new pictures after those already in the conversation
            text = "".join(f"<|image_{first + k}|>\n" for k in range(len(images))) + text
        thumbs = [p["thumb"] for p in self.pending]
        names = [f"image {first + k}" for k in range(len(thumbs))]
        with self.hold_sync():
            self.error, self.busy, self.pending = "", True, []
            self.messages = [
                *self.messages,
                {"role": "user", "content": shown, "images": thumbs, "image_labels": names},
            ]
        self._stop.clear()
        self._worker = threading.Thread(target=self._answer, args=(text, images), daemon=True)
        self._worker.start()

    def _answer(self, text: str, images: list) -> None:
        try:
            result = self.session.chat(
                text,
                images or None,
                stream=False,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                stop=self._stop,
                on_text=lambda piece: self.send({"type": "delta", "text": piece}),
            )
        except Exception as exc:  # a refused prompt, a prompt over the context: say so, keep nothing
            with self.hold_sync():
                self.messages = self.messages[:-1]
                self.error = f"{type(exc).__name__}: {exc}"
                self.busy = False
            return
        with self.hold_sync():
            self.messages = [*self.messages, {"role": "assistant", "content": result.text, "stats": result.stats()}]
            self.busy = False

    def _msg_stop(self, content: dict) -> None:
        self.stop()

    def _msg_reset(self, content: dict) -> None:
        self.reset()

    def _msg_image(self, content: dict) -> None:
        from PIL import Image

        data = base64.b64decode(str(content.get("data", "")).split(",")[-1])
        try:
            picture = Image.open(io.BytesIO(data))
            picture.load()
        except Exception as exc:
            raise ValueError(f"{content.get('name', 'the file')} is not a picture PIL can read ({exc})") from None
        self.attach(picture, str(content.get("name", "image")))

    def _msg_clear_images(self, content: dict) -> None:
        self._images, self.pending = [], []

    # --- static forms ---------------------------------------------------------------------------

    def to_text(self) -> str:
        head = f"chat with {self.model_name}: {len(self.messages)} message(s)"
        lines = [head] + ([f"system: {self.system}"] if self.system else [])
        for m in self.messages:
            pictures = "".join(f"[{name}] " for name in m.get("image_labels") or ())
            lines.append(f"{m.get('role')}: {pictures}{m.get('content', '')}")
            if m.get("stats"):
                lines.append(f"  ({m['stats']})")
        return "\n".join(lines)

    def to_html(self) -> str:
        """The conversation as HTML; every text is escaped and only ``data:image/…`` URLs become pictures."""
        rows = [f"<div style='font-size:85%;opacity:0.8'>chat with {html.escape(str(self.model_name))}</div>"]
        shown = ([{"role": "system", "content": self.system}] if self.system else []) + list(self.messages)
        for m in shown:
            role = str(m.get("role", ""))
            labels = list(m.get("image_labels") or [])
            pictures = []
            for k, source in enumerate(m.get("images") or ()):
                name = html.escape(str(labels[k]) if k < len(labels) else f"picture {k + 1}")
                if isinstance(source, str) and _PICTURE.match(source):
                    pictures.append(
                        f'<img src="{html.escape(source)}" alt="{name}" title="{name}" style="max-height:48px;margin:2px">'
                    )
                else:
                    pictures.append(f"<span style='opacity:0.7'>[{name}: not a picture URL, not shown]</span>")
            rows.append(
                f"<div style='background:{COLOURS.get(role, '#e5e7eb')};color:#111827;padding:3px 8px;margin:3px 0;"
                f"border-radius:6px;white-space:pre-wrap'><b>{html.escape(role)}</b> {''.join(pictures)}"
                f"{html.escape(str(m.get('content', '')))}</div>"
            )
            if m.get("stats"):
                rows.append(f"<div style='font-size:85%;opacity:0.8'>{html.escape(str(m['stats']))}</div>")
        return "".join(rows)
