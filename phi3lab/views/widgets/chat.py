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
"""

from __future__ import annotations

import base64
import html
import io
import re
import threading

import traitlets

from phi3lab.views.widgets._base import PhiWidget, data_url

__all__ = ["ChatWidget"]

_TAG = re.compile(r"<\|image_\d+\|>")


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
        self._lab = lab
        self._stop = threading.Event()
        self._images: list = []
        self._worker: threading.Thread | None = None
        super().__init__(
            model_name=lab.spec.name,
            vision=lab.spec.modality == "vision",
            system=system or "",
            temperature=float(temperature),
            max_new_tokens=int(max_new_tokens),
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

    def _msg_send(self, content: dict) -> None:
        text = str(content.get("text", "")).strip()
        if self.busy:
            self.error = "an answer is still being generated; press Stop first"
            return
        if not text:
            self.error = "type a message first"
            return
        if not self.messages:  # a first turn takes the system prompt as it reads now
            self.session = self._lab.session(system=self.system or None)
        images, self._images = self._images, []
        if images and not _TAG.search(text):  # number new pictures after those already in the conversation
            first = len(self.session.images) + 1
            text = "".join(f"<|image_{first + k}|>\n" for k in range(len(images))) + text
        thumbs = [p["thumb"] for p in self.pending]
        with self.hold_sync():
            self.error, self.busy, self.pending = "", True, []
            self.messages = [*self.messages, {"role": "user", "content": text, "images": thumbs}]
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
            lines.append(f"{m['role']}: {m['content']}")
            if m.get("stats"):
                lines.append(f"  ({m['stats']})")
        return "\n".join(lines)

    def to_html(self) -> str:
        colours = {"user": "#bfdbfe", "assistant": "#bbf7d0", "system": "#e9d5ff"}
        rows = [f"<div style='font-size:85%;opacity:0.8'>chat with {html.escape(self.model_name)}</div>"]
        shown = ([{"role": "system", "content": self.system}] if self.system else []) + list(self.messages)
        for m in shown:
            pictures = "".join(f'<img src="{t}" style="max-height:48px;margin:2px">' for t in m.get("images", ()))
            rows.append(
                f"<div style='background:{colours[m['role']]};color:#111827;padding:3px 8px;margin:3px 0;"
                f"border-radius:6px;white-space:pre-wrap'><b>{m['role']}</b> {pictures}"
                f"{html.escape(m['content'])}</div>"
            )
            if m.get("stats"):
                rows.append(f"<div style='font-size:85%;opacity:0.8'>{html.escape(m['stats'])}</div>")
        return "".join(rows)
