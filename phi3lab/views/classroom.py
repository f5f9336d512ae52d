"""The classroom page: phi3lab's widgets on the embedded models, in large type, with no code on screen.

    python3 tasks.py demo                          # Voilà on 127.0.0.1 with a token; open the printed URL
    python -m phi3lab.views.classroom --port 8870  # the same from any install with the [demo] extra

One page for a projector: a chat box on the embedded text model (``tiny``) and, below it, a picture
question on the embedded vision model (``tiny-vision``): pick one of the shipped pictures
(``data/images``) or upload one, ask, and the answer comes with the attention explorer (hover a
token: where it looks) and the patch explorer (each image cell's heat for each answer token).

:class:`Classroom` is the page itself, an ``ipywidgets`` box that also works in any notebook
(``Classroom()`` as a cell's last line) and is tested without a browser; :func:`main` serves it with
Voilà, which runs a one-cell notebook (:func:`write_notebook`) and shows only its output.  The page
binds 127.0.0.1 and asks for a token, like ``jupyter lab``: a class on one machine, nobody else.

    >>> room = Classroom(max_new_tokens=4)              # doctest: +SKIP
    >>> room.pick("chart.png"); answer = room.look()    # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import re
import secrets
import socket
import sys
import tempfile
from pathlib import Path

__all__ = ["Classroom", "QUESTIONS", "STYLE", "picture_from_bytes", "write_notebook", "main"]

#: A question the embedded vision model was trained to answer, per shipped picture.
QUESTIONS = {
    "shapes.png": "What colour is the triangle?",
    "chart.png": "Which bar is tallest?",
    "word.png": "What word is written?",
    "scene.jpg": "What is shown in this image?",
}
DEFAULT_QUESTION = "What is shown in this image?"
MAX_UPLOAD_BYTES = 8 * 2**20
MAX_QUESTION_CHARS = 300

#: Large type for a projector: phi3lab's widgets and ipywidgets read these CSS variables.
STYLE = """
.phi3lab-classroom { font-size: 22px; line-height: 1.45;
  --jp-ui-font-size1: 21px; --jp-ui-font-size2: 18px; --jp-code-font-size: 20px;
  --jp-content-font-size1: 22px; --jp-widgets-font-size: 21px; --jp-widgets-inline-height: 44px; }
.phi3lab-classroom h1 { font-size: 38px; margin: 8px 0 4px; }
.phi3lab-classroom h2 { font-size: 29px; margin: 18px 0 6px; }
.phi3lab-classroom .phi3lab-classroom-answer { font-size: 30px; font-weight: 600; margin: 8px 0; }
.phi3lab-classroom .phi3lab-classroom-problem { font-size: 22px; font-weight: 600; }
.phi3lab-classroom .phi3lab-chat textarea { font-size: 22px; }
.phi3lab-classroom .widget-toggle-buttons .widget-toggle-button { width: auto; padding: 0 14px; }
"""


def picture_from_bytes(name: str, data: bytes):
    """An uploaded file as an RGB PIL image, or a :class:`ValueError` that says what to upload instead."""
    from PIL import Image, UnidentifiedImageError

    from phi3lab.prompts.images import MAX_PIXELS, to_rgb

    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(
            f"{name} is {len(data) / 2**20:.1f} MiB, over the {MAX_UPLOAD_BYTES // 2**20} MiB limit "
            "for the classroom page; upload a smaller PNG or JPEG"
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(
                    f"{name} is {im.width}×{im.height} pixels, over the {MAX_PIXELS / 1e6:.0f} Mpx limit; "
                    "downscale it and upload it again"
                )
            im.load()
            return to_rgb(im.copy())
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not a picture PIL can read; upload a PNG or JPEG") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{name} could not be decoded ({exc}); upload a PNG or JPEG") from None


def _png(picture, side: int = 360) -> bytes:
    thumb = picture.copy()
    thumb.thumbnail((side, side))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return buffer.getvalue()


class Classroom:
    """The classroom page: a chat box, a picture question and the two explorers, in large type.

    Args:
        text: the :class:`~phi3lab.Lab` for the chat box (default: ``phi3lab.load("tiny")``).
        vision: the Lab for picture questions (default: ``phi3lab.load("tiny-vision")``).
        max_new_tokens: upper bound on each answer's length.
        look: answer the first picture's question at once, so the page opens with the explorers drawn.

    Attributes:
        pictures: name → PIL image: the shipped pictures, then any uploaded ones.
        picture: the name of the chosen picture.
        cache: the :class:`~phi3lab.inspect.cache.Cache` of the last picture question (``None`` before).
        answer: the text of the last picture answer.
        problem: what went wrong with the last upload or question, in words ("" when nothing did).
        box: the ``ipywidgets`` box that is the page.
    """

    def __init__(self, text=None, vision=None, *, max_new_tokens: int = 12, look: bool = True):
        import ipywidgets as w

        import phi3lab
        from phi3lab.prompts.images import sample_image, sample_image_names
        from phi3lab.views.widgets import ChatWidget

        self.text = text if text is not None else phi3lab.load("tiny", verbose=False)
        self.vision = vision if vision is not None else phi3lab.load("tiny-vision", verbose=False)
        if self.vision.spec.modality != "vision":
            raise ValueError(
                f"the picture part needs a vision model; {self.vision.spec.name} is a text model "
                "(pass vision=phi3lab.load('tiny-vision'))"
            )
        self.max_new_tokens = int(max_new_tokens)
        self.pictures = {name: sample_image(name) for name in sample_image_names()}
        if not self.pictures:
            raise FileNotFoundError("no shipped pictures were found (data/images); reinstall phi3lab")
        # the chart first: the embedded vision model answers it right (it names the shapes' colours wrongly today)
        self.picture = "chart.png" if "chart.png" in self.pictures else next(iter(self.pictures))
        self.cache = None
        self.answer = ""
        self.problem = ""

        self.chat = ChatWidget(self.text, system="Answer briefly.", max_new_tokens=48)
        self.picker = w.ToggleButtons(options=list(self.pictures), value=self.picture, description="")
        self.preview = w.Image(value=_png(self.pictures[self.picture]), format="png")
        self.preview.layout = w.Layout(max_width="360px", max_height="360px", border="1px solid #d1d5db")
        self.upload_button = w.FileUpload(accept="image/*", multiple=False, description="Upload a picture")
        self.upload_button.layout = w.Layout(width="auto")
        self.question = w.Text(value=QUESTIONS.get(self.picture, DEFAULT_QUESTION), description="")
        self.question.layout = w.Layout(width="640px")
        self.ask_button = w.Button(description="Ask about the picture", button_style="primary")
        self.ask_button.layout = w.Layout(width="auto")
        self.status = w.HTML("")
        self.explorers = w.VBox([])

        self.picker.observe(lambda change: self.pick(change["new"]), names="value")
        self.upload_button.observe(self._uploaded, names="value")
        self.ask_button.on_click(lambda _button: self.look())

        self.box = w.VBox(
            [
                w.HTML(f"<style>{STYLE}</style><h1>A look inside a small Phi-3</h1>"),
                w.HTML(
                    f"<h2>Chat with {html.escape(self.text.spec.name)}</h2>"
                    "<div>Type a question and press Send; the answer appears word by word.</div>"
                ),
                self.chat,
                w.HTML(f"<h2>Ask {html.escape(self.vision.spec.name)} about a picture</h2>"),
                w.HBox([self.picker, self.upload_button]),
                w.HBox([self.preview, w.VBox([self.question, self.ask_button, self.status])]),
                self.explorers,
            ]
        )
        self.box.add_class("phi3lab-classroom")
        if look:
            self.look()

    # --- what the controls do ---------------------------------------------------------------------

    def pick(self, name: str) -> None:
        """Choose a picture by name (a shipped one or an upload); its suggested question fills the box."""
        if name not in self.pictures:
            raise KeyError(f"no picture named {name!r}; the page has {', '.join(map(repr, self.pictures))}")
        self.picture = name
        self.preview.value = _png(self.pictures[name])
        self.question.value = QUESTIONS.get(name, DEFAULT_QUESTION)
        if self.picker.value != name:
            self.picker.value = name

    def upload(self, name: str, data: bytes) -> str:
        """Add an uploaded picture and choose it; returns the name it is listed under.

        Raises:
            ValueError: the file is not a picture PIL reads, or too big (the message says what to upload).
        """
        picture = picture_from_bytes(name, bytes(data))
        label = f"uploaded: {Path(name).name or 'picture'}"
        self.pictures[label] = picture
        self.picker.options = list(self.pictures)
        self.pick(label)
        return label

    def _uploaded(self, change) -> None:
        for item in change["new"] or ():
            try:
                self.upload(item["name"], item["content"])
                self._say("")
            except ValueError as exc:
                self._say(str(exc))

    def look(self, question: str | None = None) -> str:
        """Ask the vision model the question about the chosen picture; draw the answer and both explorers.

        Returns the answer's text.  A question the model cannot take (empty, too long, a stray
        control token) is refused in :attr:`problem` and on the page; the previous view stays.
        """
        from phi3lab.views.widgets import AttentionExplorer, PatchExplorer

        asked = (self.question.value if question is None else str(question)).strip()
        if not asked:
            return self._say("type a question about the picture first")
        if len(asked) > MAX_QUESTION_CHARS:
            return self._say(f"that question is {len(asked)} characters; keep it under {MAX_QUESTION_CHARS}")
        self.ask_button.disabled = True
        self.status.value = "<i>thinking…</i>"
        try:
            result, cache = self.vision.generate_with_cache(
                f"<|image_1|>\n{asked}", [self.pictures[self.picture]], max_new_tokens=self.max_new_tokens
            )
        except ValueError as exc:  # a prompt the template refuses (e.g. a typed <|end|>)
            self.ask_button.disabled = False
            return self._say(str(exc))
        self.ask_button.disabled = False
        for old in self.explorers.children:
            old.close()
        self.cache, self.answer, self.problem = cache, result.text.strip(), ""
        self.status.value = ""
        self.explorers.children = [
            _html(
                f'<div class="phi3lab-classroom-answer">{html.escape(self.vision.spec.name)} answers: '
                f"{html.escape(self.answer) or '(nothing)'}</div>"
                "<h2>Where it looked</h2><div>Hover or click a token to see which tokens it attends to.</div>"
            ),
            AttentionExplorer(cache),
            _html("<h2>Where it looked on the picture</h2><div>Click an answer token; hover a cell.</div>"),
            PatchExplorer(cache),
        ]
        return self.answer

    def _say(self, problem: str) -> str:
        self.problem = problem
        self.status.value = f'<span class="phi3lab-classroom-problem">{html.escape(problem)}</span>' if problem else ""
        return ""

    # --- display ----------------------------------------------------------------------------------

    def to_text(self) -> str:
        lines = [
            f"classroom: chat with {self.text.spec.name}; pictures for {self.vision.spec.name}: "
            f"{', '.join(self.pictures)} (chosen: {self.picture})",
            f"question: {self.question.value}",
        ]
        if self.cache is not None:
            lines.append(f"answer: {self.answer}")
        if self.problem:
            lines.append(f"problem: {self.problem}")
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return f"Classroom({self.text.spec.name!r}, {self.vision.spec.name!r}, picture {self.picture!r})"

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            data, metadata = bundle
        else:
            data, metadata = bundle or {}, {}
        return {**data, "text/plain": self.to_text()}, metadata


def _html(markup: str):
    import ipywidgets as w

    return w.HTML(markup)


# --- serving -------------------------------------------------------------------------------------

CELL = """\
# The classroom page (phi3lab.views.classroom); Voilà shows only this cell's output.
from phi3lab.views.classroom import Classroom

Classroom()
"""


def write_notebook(folder: Path | str) -> Path:
    """Write the one-cell notebook Voilà serves into ``folder``; returns its path."""
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": CELL}],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = Path(folder) / "classroom.ipynb"
    path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    return path


TEMPLATE = "phi3lab-classroom"
#: Lab extensions Voilà would load that the page does not use and that fail in it (a console error).
UNUSED_EXTENSIONS = ["@jupyter-notebook/lab-extension"]
_REMOTE_LINK = re.compile(r"""\s*<link\b[^>]*\bhref=["']https?://[^"']*["'][^>]*>""", re.I)


def write_template(folder: Path | str) -> Path:
    """Write the page's Voilà template into ``folder/voila/templates``; returns ``folder`` (for ``JUPYTER_PATH``).

    It is Voilà's own ``lab`` template read from the installed Voilà, less its stylesheet links to a
    CDN (Font Awesome, which Voilà's bundled scripts already carry), so the page loads nothing from
    another host.  Raises :class:`FileNotFoundError` when Voilà's template is not installed.
    """
    from jupyter_core.paths import jupyter_path

    found = [Path(p) / "voila" / "templates" / "lab" / "index.html.j2" for p in jupyter_path()]
    source = next((p for p in found if p.is_file()), None)
    if source is None:
        raise FileNotFoundError("Voilà's lab template is missing; reinstall it: pip install 'phi3lab[demo]'")
    target = Path(folder) / "voila" / "templates" / TEMPLATE
    target.mkdir(parents=True, exist_ok=True)
    (target / "index.html.j2").write_text(_REMOTE_LINK.sub("", source.read_text(encoding="utf-8")), encoding="utf-8")
    (target / "conf.json").write_text(json.dumps({"base_template": "lab"}), encoding="utf-8")
    return Path(folder)


def voila_command(notebook: Path, port: int, token: str) -> list[str]:
    """The Voilà command line: 127.0.0.1 only, a token, no browser, sources stripped, light theme."""
    return [
        sys.executable,
        "-m",
        "voila",
        str(notebook),
        "--no-browser",
        "--Voila.ip=127.0.0.1",
        f"--port={port}",
        f"--token={token}",
        "--theme=light",
        "--strip_sources=True",
        "--show_tracebacks=False",
        f"--template={TEMPLATE}",
        f"--VoilaConfiguration.extension_denylist={json.dumps(UNUSED_EXTENSIONS)}",
    ]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3lab.views.classroom", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PHI3LAB_DEMO_PORT", 8870)))
    parser.add_argument("--token", default=None, help="the page's token (default: a new random one)")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port; give 1..65535 (e.g. --port 8870)")
    if not _port_free(args.port):
        parser.error(f"port {args.port} on 127.0.0.1 is in use; choose another with --port")
    try:
        import voila  # noqa: F401
    except ImportError:
        sys.exit("Voilà is not installed; run python3 tasks.py demo (or pip install 'phi3lab[demo]')")
    token = args.token or secrets.token_hex(16)
    folder = Path(tempfile.mkdtemp(prefix="phi3lab-classroom-"))
    notebook = write_notebook(folder)
    templates = write_template(folder / "share")
    print(f"[phi3lab] classroom page: http://127.0.0.1:{args.port}/?token={token}", flush=True)
    print("[phi3lab] it loads the embedded models when opened (a few seconds); Ctrl-C stops the server", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(templates), os.environ.get("JUPYTER_PATH", "")) if p)
    os.chdir(folder)
    command = voila_command(notebook, args.port, token)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
