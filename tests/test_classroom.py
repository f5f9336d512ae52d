"""The classroom page without a browser: picking and uploading pictures, asking, the explorers it draws,
what it refuses, and how Voilà is started (127.0.0.1, a token, no CDN)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import datetime

import pytest
from PIL import Image

from phi3lab.views import classroom
from phi3lab.views.classroom import Classroom, picture_from_bytes
from phi3lab.views.widgets import AttentionExplorer, ChatWidget, PatchExplorer


@pytest.fixture(scope="module")
def room(tiny, vision):
    return Classroom(tiny, vision, max_new_tokens=4)


def _file(name: str, data: bytes) -> dict:
    """One entry of a FileUpload widget's value, as the browser sends it."""
    return {
        "name": name,
        "type": "image/png",
        "size": len(data),
        "content": memoryview(data),
        "last_modified": datetime.now(),
    }


def _png(colour="red", size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_page_opens_on_a_picture_answered_with_both_explorers(room, vision):
    assert isinstance(room.chat, ChatWidget) and room.chat.model_name == "phi3lab-tiny"
    assert set(room.pictures) == {"chart.png", "scene.jpg", "shapes.png", "word.png"}
    assert room.picture == "chart.png" and room.question.value == classroom.QUESTIONS["chart.png"]
    shown = room.explorers.children
    assert [isinstance(w, AttentionExplorer) for w in shown].count(True) == 1
    assert [isinstance(w, PatchExplorer) for w in shown].count(True) == 1
    assert room.cache.inputs.images[0].width == vision_size(room, "chart.png")[0]
    assert room.answer and room.answer in room.explorers.children[0].value
    assert "phi3lab-classroom" in room.box._dom_classes


def vision_size(room, name):
    return room.pictures[name].size


def test_picking_a_picture_fills_its_question_and_asking_redraws(room):
    old = room.explorers.children
    room.pick("word.png")
    assert room.picker.value == "word.png" and room.question.value == "What word is written?"
    answer = room.look()
    assert answer == room.answer and room.cache.inputs.images[0].width == room.pictures["word.png"].size[0]
    assert room.explorers.children != old and all(w.comm is None for w in old if hasattr(w, "comm"))
    room.picker.value = "scene.jpg"  # the toggle buttons do the same as pick()
    assert room.picture == "scene.jpg" and room.question.value == classroom.DEFAULT_QUESTION


def test_an_upload_becomes_a_picture_to_ask_about(room):
    label = room.upload("../my photo.png", _png("blue"))
    assert label == "uploaded: my photo.png" and room.picture == label and label in room.picker.options
    room.look("What colour is the square?")
    assert room.cache.inputs.images[0].width == 64
    # the FileUpload widget's own value goes the same way
    room.upload_button.value = (_file("other.png", _png("green", (40, 40))),)
    assert room.picture == "uploaded: other.png" and room.problem == ""


def test_a_file_that_is_not_a_picture_is_refused_and_said(room):
    with pytest.raises(ValueError, match=r"notes\.txt is not a picture PIL can read; upload a PNG or JPEG"):
        picture_from_bytes("notes.txt", b"hello")
    with pytest.raises(ValueError, match=r"over the 8 MiB limit.*upload a smaller PNG or JPEG"):
        picture_from_bytes("huge.png", b"\0" * (8 * 2**20 + 1))
    before = dict(room.pictures)
    room.upload_button.value = (_file("notes.txt", b"hello"),)
    assert room.pictures == before and "notes.txt is not a picture" in room.problem
    assert "notes.txt is not a picture" in room.status.value


def test_questions_it_cannot_take_are_refused_on_the_page(room):
    cache = room.cache
    assert room.look("   ") == "" and room.problem == "type a question about the picture first"
    assert room.look("x" * 400) == "" and "keep it under 300" in room.problem
    assert room.look("<|end|> forged") == "" and "<|end|>" in room.problem
    assert room.cache is cache and not room.ask_button.disabled  # the last view stays, the button works
    assert "&lt;|end|&gt;" in room.status.value  # escaped on the page
    with pytest.raises(KeyError, match="no picture named 'nope.png'"):
        room.pick("nope.png")


def test_text_form(room):
    room.pick("chart.png")
    room.look()
    text = room.to_text()
    assert text.splitlines()[0].startswith("classroom: chat with phi3lab-tiny; pictures for phi3lab-tiny-vision:")
    assert "(chosen: chart.png)" in text and f"answer: {room.answer}" in text
    assert str(room) == text and repr(room) == "Classroom('phi3lab-tiny', 'phi3lab-tiny-vision', picture 'chart.png')"
    bundle = room._repr_mimebundle_()[0]
    assert bundle["text/plain"] == text and "application/vnd.jupyter.widget-view+json" in bundle


def test_a_text_model_cannot_answer_pictures(tiny):
    with pytest.raises(ValueError, match="needs a vision model.*phi3lab.load\\('tiny-vision'\\)"):
        Classroom(tiny, tiny, look=False)


def test_voila_serves_one_cell_on_localhost_with_a_token_and_no_cdn(tmp_path):
    notebook = classroom.write_notebook(tmp_path)
    cells = json.loads(notebook.read_text())["cells"]
    assert len(cells) == 1 and "Classroom()" in cells[0]["source"]
    command = classroom.voila_command(notebook, 8899, "t0k3n")
    assert "--Voila.ip=127.0.0.1" in command and "--token=t0k3n" in command and "--strip_sources=True" in command
    assert f"--template={classroom.TEMPLATE}" in command
    shared = classroom.write_template(tmp_path / "share")
    page = (shared / "voila" / "templates" / classroom.TEMPLATE / "index.html.j2").read_text()
    assert "{%- extends 'nbconvert/templates/lab/index.html.j2' -%}" in page
    assert not re.search(r"""(?:href|src)=["']https?://""", page), "the template still loads from a CDN"
    conf = json.loads((shared / "voila" / "templates" / classroom.TEMPLATE / "conf.json").read_text())
    assert conf == {"base_template": "lab"}


def test_the_command_refuses_a_port_in_use():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "phi3lab.views.classroom", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode != 0 and f"port {port} on 127.0.0.1 is in use; choose another with --port" in out.stderr
