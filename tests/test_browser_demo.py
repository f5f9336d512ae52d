"""The classroom page in a real browser: ``python -m phi3lab.views.classroom`` (what ``python3 tasks.py demo``
runs) serves it with Voilà on 127.0.0.1; headless Chromium, with every request off 127.0.0.1 blocked, asks a
question and watches the answer stream in, hovers a token, picks and uploads pictures, and checks that the
type is large, that no code is shown and that the page logged no console error.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser_support import Watch, free_port
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The classroom server on 127.0.0.1, started through phi3lab.serving.guard.spawn so it dies with the test
    process even when that is killed; stopped (its process group) at the end."""
    from phi3lab.serving.guard import spawn, stop_group

    port, token = free_port(), secrets.token_hex(16)
    log_path = tmp_path_factory.mktemp("demo") / "voila.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    with open(log_path, "w") as log:
        server = spawn(
            [sys.executable, "-m", "phi3lab.views.classroom", "--port", str(port), "--token", token],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    urllib.request.urlopen(f"{base}/voila/static/voila.js", timeout=2).close()
                    break
                except urllib.error.HTTPError:  # answering: up
                    break
                except OSError:
                    time.sleep(0.5)
            if server.poll() is not None or time.monotonic() >= deadline:
                pytest.fail(f"the classroom server did not start; its log:\n{log_path.read_text()[-3000:]}")
            yield base, token
        finally:
            stop_group(server.pid, grace=10.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)


def test_without_the_token_the_page_is_refused(demo):
    import http.client
    from urllib.parse import urlparse

    base, token = demo
    connection = http.client.HTTPConnection(urlparse(base).hostname, urlparse(base).port, timeout=60)
    connection.request("GET", "/")
    response = connection.getresponse()
    body = response.read().decode("utf-8", "replace")
    connection.close()
    refused = response.status in (401, 403) or (response.status == 302 and "login" in response.getheader("Location"))
    assert refused and "phi3lab-classroom" not in body, (response.status, response.getheader("Location"))


def _heat(page) -> str:
    return page.eval_on_selector_all(
        ".phi3lab-attention .phi3lab-strip .phi3lab-chip", "nodes => nodes.map(n => n.dataset.heat || '').join(',')"
    )


def test_browser_classroom_asks_streams_hovers_and_switches_pictures(browser, demo, tmp_path):
    base, token = demo
    watch = Watch(browser)
    page = watch.page
    try:
        page.goto(f"{base}/?token={token}", wait_until="commit", timeout=120_000)  # Voilà streams while it runs
        page.wait_for_selector(".phi3lab-classroom .phi3lab-attention .phi3lab-chip[data-heat]", timeout=240_000)
        page.wait_for_selector(".phi3lab-classroom .phi3lab-patches canvas", timeout=60_000)
        assert page.locator(".jp-InputArea, .jp-CodeMirrorEditor, .cm-editor").count() == 0  # no code shown
        size = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.phi3lab-classroom')).fontSize)")
        chat_size = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.phi3lab-chat')).fontSize)")
        assert size >= 20 and chat_size >= 20, (size, chat_size)
        first_answer = page.inner_text(".phi3lab-classroom-answer")
        assert "answers:" in first_answer

        # a question asked in the chat box: the answer arrives piece by piece, then its stats
        page.evaluate("""() => {
            window.__pieces = [];
            const log = document.querySelector('.phi3lab-chat .phi3lab-log');
            new MutationObserver(() => {
                const s = log.querySelector('.phi3lab-streaming');
                if (s && s.textContent) window.__pieces.push(s.textContent);
            }).observe(log, {childList: true, subtree: true, characterData: true});
        }""")
        page.locator(".phi3lab-chat textarea.phi3lab-message").fill("What is 2 plus 3?")
        page.locator(".phi3lab-chat .phi3lab-send").click()
        page.wait_for_selector(".phi3lab-chat .phi3lab-stats", timeout=120_000)
        answer = page.locator(".phi3lab-chat .phi3lab-msg-assistant").last.inner_text().strip()
        stats = page.locator(".phi3lab-chat .phi3lab-stats").last.inner_text()
        pieces = page.evaluate("window.__pieces")
        assert answer and re.search(r"\d+ prompt \+ \d+ new tokens", stats), (answer, stats)
        assert len(set(pieces)) >= 2 and all(answer.startswith(p.strip()) for p in pieces), pieces  # streamed

        # a token hovered: the strip repaints with where that token looks
        before = _heat(page)
        chips = page.locator(".phi3lab-attention .phi3lab-strip .phi3lab-selectable")
        chips.nth(chips.count() - 3).hover()
        page.wait_for_function(
            """before => Array.from(document.querySelectorAll('.phi3lab-attention .phi3lab-strip .phi3lab-chip'))
            .map(n => n.dataset.heat || '').join(',') !== before""",
            arg=before,
            timeout=30_000,
        )

        # another shipped picture, asked about: a new answer and new explorers
        page.locator(".widget-toggle-button", has_text="word.png").click()
        page.wait_for_function(
            "document.querySelector('.phi3lab-classroom input[type=text]').value === 'What word is written?'",
            timeout=30_000,
        )
        page.locator("button", has_text="Ask about the picture").click()
        page.wait_for_function(
            "first => document.querySelector('.phi3lab-classroom-answer') && "
            "document.querySelector('.phi3lab-classroom-answer').innerText !== first",
            arg=first_answer,
            timeout=120_000,
        )
        page.wait_for_selector(".phi3lab-classroom .phi3lab-patches canvas", timeout=60_000)

        # an upload becomes a picture to choose
        upload = tmp_path / "my drawing.png"
        Image.new("RGB", (120, 90), "orange").save(upload)
        with page.expect_file_chooser() as chooser:
            page.locator(".phi3lab-classroom .widget-upload").click()
        chooser.value.set_files(str(upload))
        page.wait_for_selector(".widget-toggle-button:has-text('uploaded: my drawing.png')", timeout=60_000)
        watch.shot("classroom")
        watch.check()
    finally:
        watch.close()
