"""The widgets in a real browser: headless Chromium against JupyterLab 4 and Notebook 7 started here
on 127.0.0.1, and an exported HTML page opened with the network off.

Each test checks that every widget renders, that an interaction changes what is shown, that each view
draws its colour scale with numbers, that noise-level attributions are drawn uncoloured (and real ones
in the colours :mod:`phi3lab.colours` computes), that nothing a message carries runs as script,
that the page logged no console error, and that no request left 127.0.0.1 (every other request is
blocked and recorded).  The exported page must carry the notebook's name as its title and answer hovers
and clicks from the saved payload.  One browser and one Jupyter server serve the whole session.  Without
Chromium or Playwright the tests skip and say what to install; ``-m "not browser"`` deselects them.
``PHI3LAB_BROWSER_SHOTS=<folder>`` saves screenshots of each page and each widget to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from browser_support import jupyter_lab

pytestmark = pytest.mark.browser

INSTALL = "apt-get install -y chromium && pip install playwright==1.65.2 (no browser download: the test uses Debian's)"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

TESTS = str(Path(__file__).resolve().parent)
SETUP = f"""\
import sys
sys.path.insert(0, {TESTS!r})  # sink_support: the model has no sinks of its own on this picture, so two are planted
import phi3lab
from PIL import Image
from phi3lab.inspect.sinks import DEFAULT_QUESTIONS
from sink_support import crop_and_global, planted_sinks
from phi3lab.paths import data_dir
from phi3lab.views.widgets import AttentionExplorer, AttributionView, ChatWidget, PatchExplorer
text = phi3lab.load("tiny", verbose=False)
vision = phi3lab.load("tiny-vision", verbose=False)
picture = Image.open(data_dir() / "images" / "shapes.png").convert("RGB")
question = "<|image_1|>\\nWhat colour is the triangle?"
_, cache = vision.generate_with_cache(question, [picture], max_new_tokens=6)
questions = ["What colour is the triangle?", *DEFAULT_QUESTIONS[:2]]
sinks = planted_sinks(vision, picture, crop_and_global(vision, picture, questions[0]), questions)
"""

ATTRIBUTION = """\
try:
    from phi3lab.attribution import attribute
    explained = attribute(vision, question, [picture], units=["words", "image-regions"])
except ImportError:  # the minimal protocol: unit labels, target tokens, scores
    import types, torch
    explained = types.SimpleNamespace(units=[types.SimpleNamespace(label=w, image=None) for w in ("What", "colour")],
                                      target_tokens=["▁The", "▁triangle"], scores=torch.tensor([[0.2, -0.1], [0.0, 0.9]]))
AttributionView(explained)"""

NOISE = """\
import types, torch
# '▁is' scores ±2.3e-6 (rounding noise); '▁red' has a real attribution
AttributionView(types.SimpleNamespace(units=[types.SimpleNamespace(label=w, image=None) for w in ("What", "colour", "is")],
                                      target_tokens=["▁is", "▁red"],
                                      scores=torch.tensor([[2.3e-6, -1.1e-6, 1e-7], [0.5, -3.0, 0.0]])))"""

HOSTILE = """\
from IPython.display import HTML, display
hostile = ChatWidget(text)
hostile.messages = [{"role": "user", "content": '<img src=x onerror="window.__xss = 1">',
                     "images": ['x" onerror="window.__xss = 4', "javascript:window.__xss = 5"]}]
display(HTML(hostile.to_html()))
hostile"""

LENS_LAYER = 1  # the layer the second patch explorer opens its lens on

CELLS = [
    SETUP,
    'ChatWidget(text, system="Answer briefly.", max_new_tokens=24)',
    "AttentionExplorer(cache)",
    "PatchExplorer(cache, found=sinks)",
    f'PatchExplorer(cache, source="lens", lens_layer={LENS_LAYER})',
    ATTRIBUTION,
    NOISE,
    HOSTILE,
]
KINDS = ("chat", "attention", "patches", "attribution")


@pytest.fixture(scope="session")
def expected():
    """What the notebook's patch explorers must draw, computed here from the same model, picture and question:
    the sinks' cells (two planted, found across three questions, as the notebook's first patch explorer is
    given them) and
    the patch lens's grids at every layer."""
    from sink_support import crop_and_global, planted_sinks

    import phi3lab
    from phi3lab.inspect.patch_lens import patch_lens
    from phi3lab.inspect.sinks import DEFAULT_QUESTIONS

    vision = phi3lab.load("tiny-vision", verbose=False)
    picture = phi3lab.sample_image("shapes.png")
    question = "<|image_1|>\nWhat colour is the triangle?"
    _, cache = vision.generate_with_cache(question, [picture], max_new_tokens=6)
    questions = ["What colour is the triangle?", *DEFAULT_QUESTIONS[:2]]
    sinks = planted_sinks(vision, picture, crop_and_global(vision, picture, questions[0]), questions)
    lens = patch_lens(cache)
    grids = {
        layer: {view: lens.grid(layer, view).reshape(-1).tolist() for view in ("crops", "global")}
        for layer in lens.layers
    }
    rows, cols = cache.inputs.image(0).layout.grid
    cells = {"crops": (rows * 12, cols * 12), "global": (12, 12)}
    return {
        "sinks": cache.image_heat(0, found=sinks).sink_cells(),
        "lens": grids,
        "layers": list(lens.layers),
        "cells": cells,
    }


def _chromium() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


def write_notebook(path: Path, cells=CELLS) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    return path


# ``browser``: the session's one Chromium, from tests/conftest.py (Playwright's sync API runs one per thread).


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory):
    """A JupyterLab 4 server (which also serves Notebook 7) on 127.0.0.1 with two copies of the widget notebook,
    started through phi3lab.serving.guard.spawn (tests/browser_support.py), so it dies with the test process."""
    root = tmp_path_factory.mktemp("jupyter")
    write_notebook(root / "lab.ipynb")
    write_notebook(root / "notebook7.ipynb")
    write_notebook(root / "blank.ipynb", cells=["# no widgets here"])
    with jupyter_lab(root) as (base, token):
        yield base, token


class Watch:
    """A browser context that blocks and records every request not to 127.0.0.1 (or file:, data:, blob:)
    and keeps the console errors of its pages."""

    def __init__(self, browser, **options):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, **options)
        self.left, self.errors = [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route):
        url = route.request.url
        scheme, host = urlparse(url).scheme, urlparse(url).hostname
        if scheme in ("data", "blob", "file") or host in LOCAL_HOSTS:
            route.continue_()
        else:
            self.left.append(url)
            route.abort()

    def check(self, baseline=()):
        """No request left; no console error beyond ``baseline`` (what the app logs without any widget)."""
        assert self.left == [], f"requests left 127.0.0.1: {self.left[:5]}"
        extra = [e for e in self.errors if e not in set(baseline)]
        assert extra == [], f"console errors: {extra[:5]}"

    def close(self):
        self.context.close()


def _run_all(page):
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=60_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.evaluate("""async () => {
        const panel = window.jupyterapp.shell.currentWidget;
        await panel.context.sessionContext.ready;
        await window.jupyterapp.commands.execute('notebook:run-all-cells');
    }""")


def _heat(page, selector):
    return page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.dataset.heat || '').join(',')")


def check_scales(page):
    """Each view that colours numbers draws its scale, with numbers."""
    for kind in ("attention", "patches", "attribution"):
        ticks = page.eval_on_selector(
            f".phi3lab-{kind} .phi3lab-legend[data-signal='true'] .phi3lab-ticks",
            "node => Array.from(node.children).map(n => n.textContent)",
        )
        assert len(ticks) == 3 and all(re.search(r"\d", t) for t in ticks), f"{kind}: scale ticks {ticks}"


def check_noise_is_uncoloured(page):
    """The noise-level target: every word uncoloured and labelled; the real one: Python's colours."""
    from phi3lab.colours import scale

    view = page.locator(".phi3lab-attribution").nth(1)
    view.locator(".phi3lab-toolbar .phi3lab-chip[data-token='0']").click()
    page.wait_for_function(
        "el => el.querySelector('.phi3lab-legend').dataset.signal === 'false'",
        arg=view.element_handle(),
        timeout=30_000,
    )
    chips = view.locator(".phi3lab-chip[data-unit]")
    styles = chips.evaluate_all("nodes => nodes.map(n => [n.className, getComputedStyle(n).backgroundColor, n.title])")
    assert all(
        "phi3lab-nosignal" in c and bg in ("rgba(0, 0, 0, 0)", "transparent") and "no signal" in t
        for c, bg, t in styles
    ), styles
    assert "no signal" in view.locator(".phi3lab-info").inner_text()
    view.locator(".phi3lab-toolbar .phi3lab-chip[data-token='1']").click()
    page.wait_for_function(
        "el => el.querySelector('.phi3lab-legend').dataset.signal === 'true'", arg=view.element_handle(), timeout=30_000
    )
    expected = scale([0.5, -3.0, 0.0], kind="score", label="").colours([0.5, -3.0])
    shown = chips.evaluate_all("nodes => nodes.slice(0, 2).map(n => getComputedStyle(n).backgroundColor)")
    assert shown == [f"rgb({int(c[1:3], 16)}, {int(c[3:5], 16)}, {int(c[5:7], 16)})" for c in expected], shown


def check_nothing_fired(page):
    assert page.evaluate("window.__xss") is None, "an escaped message ran a script"
    assert page.locator("img[onerror]").count() == 0


def check_widgets(page, timeout=180_000):
    """Every widget rendered; clicking / typing changes what each shows."""
    for kind in KINDS:
        page.wait_for_selector(f".phi3lab-{kind}", timeout=timeout)
        stray = page.eval_on_selector(
            f".phi3lab-{kind}",
            """el => Array.from(el.childNodes)
            .filter(n => n.nodeType === 3 && n.textContent.trim()).map(n => n.textContent)""",
        )
        assert stray == [], f"{kind}: stray text {stray}"
    page.wait_for_selector(".phi3lab-attention .phi3lab-chip[data-heat]", timeout=30_000)

    # attention: clicking another token's chip repaints the heat on the strip
    strip = ".phi3lab-attention .phi3lab-strip .phi3lab-chip"
    before = _heat(page, strip)
    chips = page.locator(".phi3lab-attention .phi3lab-selectable")
    chips.nth(1).click()
    page.wait_for_function(
        """([sel, before]) => Array.from(document.querySelectorAll(sel))
        .map(n => n.dataset.heat || '').join(',') !== before""",
        arg=[strip, before],
        timeout=30_000,
    )
    page.locator(".phi3lab-attention .phi3lab-toggles button[data-value='max']").click()
    page.wait_for_function(
        "document.querySelector('.phi3lab-attention .phi3lab-info').textContent.includes('max over')", timeout=30_000
    )
    # one head focused: mean and max draw the same heat, the info line must still follow the button
    page.locator(".phi3lab-attention .phi3lab-toggles button[data-value='mean']").click()
    page.locator(".phi3lab-attention canvas.phi3lab-thumb[data-layer='0'][data-head='1']").click()
    page.wait_for_function(
        "document.querySelector('.phi3lab-attention .phi3lab-info').textContent.includes('mean over layer 0 × head 1')",
        timeout=30_000,
    )
    page.locator(".phi3lab-attention .phi3lab-toggles button[data-value='max']").click()
    page.wait_for_function(
        "document.querySelector('.phi3lab-attention .phi3lab-info').textContent.includes('max over layer 0 × head 1')",
        timeout=30_000,
    )
    page.locator(".phi3lab-attention .phi3lab-toggles button[data-value='rollout']").click()
    page.wait_for_function(
        "document.querySelector('.phi3lab-attention .phi3lab-focus').textContent.startsWith('rollout')",
        timeout=60_000,
    )
    assert page.locator(".phi3lab-attention canvas.phi3lab-thumb.phi3lab-dim").count() == 0
    assert page.locator(".phi3lab-attention .phi3lab-all").is_disabled()
    page.locator(".phi3lab-attention .phi3lab-toggles button[data-value='mean']").click()

    # patches: another answer token changes the overlay; hovering a cell names its token
    canvas = page.locator(".phi3lab-patches canvas.phi3lab-canvas-crops").first
    canvas.wait_for()
    page.wait_for_function(
        "document.querySelector('.phi3lab-patches canvas').toDataURL().length > 1000", timeout=30_000
    )
    before = canvas.evaluate("c => c.toDataURL()")
    page.locator(".phi3lab-patches .phi3lab-targets .phi3lab-chip").nth(3).click()
    page.wait_for_function(
        "before => document.querySelector('.phi3lab-patches canvas').toDataURL() !== before", arg=before, timeout=30_000
    )
    box = canvas.bounding_box()
    canvas.hover(position={"x": box["width"] * 0.4, "y": box["height"] * 0.4})
    page.wait_for_function(
        "document.querySelector('.phi3lab-patches .phi3lab-info[aria-live]').textContent.includes('token #')",
        timeout=10_000,
    )

    # chat: a typed question streams an answer with its stats
    page.locator(".phi3lab-chat textarea.phi3lab-message").first.fill("What is 2 plus 3?")
    page.locator(".phi3lab-chat .phi3lab-send").first.click()
    page.wait_for_selector(".phi3lab-chat .phi3lab-stats", timeout=60_000)
    answer = page.locator(".phi3lab-chat .phi3lab-msg-assistant").last.inner_text()
    stats = page.locator(".phi3lab-chat .phi3lab-stats").last.inner_text()
    assert answer.strip() and re.search(r"\d+ prompt \+ \d+ new tokens · first token after \d+ ms", stats)
    chat = page.locator(".phi3lab-chat").first
    assert chat.locator("textarea.phi3lab-system").is_disabled()  # a conversation has started
    chat.locator("button", has_text="New chat").click()
    page.wait_for_function(
        "el => !el.querySelector('textarea.phi3lab-system').disabled", arg=chat.element_handle(), timeout=30_000
    )

    # attribution: another target token recolours the words
    units = ".phi3lab-attribution .phi3lab-chip[data-unit]"
    before = page.eval_on_selector_all(units, "nodes => nodes.map(n => n.dataset.score).join(',')")
    current = page.eval_on_selector(".phi3lab-attribution .phi3lab-toolbar .phi3lab-current", "n => n.dataset.token")
    other = "0" if current != "0" else "1"
    page.locator(f".phi3lab-attribution .phi3lab-toolbar .phi3lab-chip[data-token='{other}']").first.click()
    page.wait_for_function(
        """([sel, before]) => Array.from(document.querySelectorAll(sel))
        .map(n => n.dataset.score).join(',') !== before""",
        arg=[units, before],
        timeout=30_000,
    )


def _pixel(canvas, x: int, y: int) -> list[int]:
    return canvas.evaluate("(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data)", [x, y])


def check_sinks(page, expected, toggle=True):
    """The first patch explorer masks the picture's sinks and outlines their cells in the figures' grey; the
    toggle shows them (still outlined) and the line says so; the sinks are those cache.image_heat masks given
    the same sinks found across questions."""
    from phi3lab.views.plotting import SINK_OUTLINE

    assert expected["sinks"], "two sinks are planted; without them this check proves nothing"
    grey = [int(SINK_OUTLINE[i : i + 2], 16) for i in (1, 3, 5)] + [255]
    widget = page.locator(".phi3lab-patches").first
    widget.locator(".phi3lab-toggles button[data-value='attention']").click()
    page.mouse.move(0, 0)  # no hover highlight over an outline
    for view in ("crops", "global"):
        rows, cols = expected["cells"][view]
        wanted = sorted([r, c] for v, r, c in expected["sinks"] if v == view)
        canvas = widget.locator(f"canvas.phi3lab-canvas-{view}")
        page.wait_for_function("c => c.dataset.source === 'attention'", arg=canvas.element_handle(), timeout=30_000)
        width, height = canvas.evaluate("c => [c.width, c.height]")
        boxes = json.loads(canvas.evaluate("c => c.dataset.sinks"))
        drawn = sorted([round((y - 1) / (height / rows)), round((x - 1) / (width / cols))] for x, y, _, _ in boxes)
        assert drawn == wanted, f"{view}: outlined cells {drawn}, the cache's sinks {wanted}"
        for x, y, _, _ in boxes:
            assert _pixel(canvas, x + 1, y) == grey, f"{view}: the outline at ({x}, {y}) is not {SINK_OUTLINE}"
    line = widget.locator(".phi3lab-sinkline")
    assert re.search(r"sinks: \d+ sink tokens? \(\d+ cells? outlined.*\) masked, holding \d", line.inner_text())
    if not toggle:
        return
    view, r, c = expected["sinks"][0]
    rows, cols = expected["cells"][view]
    canvas = widget.locator(f"canvas.phi3lab-canvas-{view}")
    width, height = canvas.evaluate("c => [c.width, c.height]")
    centre = (int((c + 0.5) * width / cols), int((r + 0.5) * height / rows))
    masked = _pixel(canvas, *centre)
    widget.locator(".phi3lab-sink-toggle button[data-value='show']").click()
    page.wait_for_function(
        "el => el.textContent.includes(') shown, holding')", arg=line.element_handle(), timeout=30_000
    )
    page.wait_for_function(
        "([c, x, y, before]) => c.getContext('2d').getImageData(x, y, 1, 1).data.join(',') !== before.join(',')",
        arg=[canvas.element_handle(), *centre, masked],
        timeout=30_000,
    )
    assert json.loads(canvas.evaluate("c => c.dataset.sinks")), "shown sinks stay outlined"
    shown = _pixel(canvas, *centre)
    assert sum(shown[:3]) > sum(masked[:3]), "a shown sink draws attention: its veil lifts"
    widget.locator(".phi3lab-sink-toggle button[data-value='mask']").click()
    page.wait_for_function(
        "el => el.textContent.includes(') masked, holding')", arg=line.element_handle(), timeout=30_000
    )


def _pieces(widget, view):
    return widget.locator(f"canvas.phi3lab-canvas-{view}").evaluate(
        "c => c.dataset.pieces ? JSON.parse(c.dataset.pieces) : null"
    )


def wait_for_lens(page, widget, layer, expected, timeout=60_000):
    """The widget's canvases print the lens of ``layer``: every cell's top token as the test computed it."""
    page.wait_for_function(
        "el => Array.from(el.querySelectorAll('canvas')).every(c => c.dataset.lensLayer === String(window.__lensLayer)"
        " && c.dataset.pieces)".replace("window.__lensLayer", str(layer)),
        arg=widget.element_handle(),
        timeout=timeout,
    )
    for view in ("crops", "global"):
        assert _pieces(widget, view) == expected["lens"][layer][view], f"{view}: the drawn lens is not layer {layer}'s"
    assert f"lens layer {layer}" in widget.locator(".phi3lab-lens-label").inner_text()
    assert widget.locator(".phi3lab-legend[data-kind='lens']").count() == 1


def check_lens(page, expected, live=True):
    """The second patch explorer opens on the lens at LENS_LAYER; the slider (keyboard) moves it to the last
    layer and the drawn tokens follow; hovering names a cell's piece and probability.  Live, the first
    explorer's lens button reads the lens in the kernel and draws it."""
    layers = expected["layers"]
    assert expected["lens"][LENS_LAYER] != expected["lens"][layers[-1]], "two layers that read alike prove nothing"
    widget = page.locator(".phi3lab-patches").nth(1)
    wait_for_lens(page, widget, LENS_LAYER, expected)
    assert "most read" in widget.locator(".phi3lab-info").first.inner_text()
    slider = widget.locator("input.phi3lab-lens-slider")
    assert slider.is_visible() and slider.is_enabled()
    slider.focus()
    page.keyboard.press("End")
    wait_for_lens(page, widget, layers[-1], expected)
    canvas = widget.locator("canvas.phi3lab-canvas-global")
    box = canvas.bounding_box()
    canvas.hover(position={"x": box["width"] * 0.55, "y": box["height"] * 0.55})
    hover = widget.locator(".phi3lab-info[aria-live]")
    page.wait_for_function(
        'el => /reads ".+", p≈[0-9.]+/.test(el.textContent)', arg=hover.element_handle(), timeout=10_000
    )
    page.mouse.move(0, 0)
    if live:
        first = page.locator(".phi3lab-patches").first
        first.locator(".phi3lab-toggles button[data-value='lens']").click()
        wait_for_lens(page, first, layers[-1], expected)
        first.locator("input.phi3lab-lens-slider").focus()
        page.keyboard.press("Home")
        wait_for_lens(page, first, layers[0], expected)
        first.locator(".phi3lab-toggles button[data-value='attention']").click()


def _luminance(css: str) -> float:
    r, g, b = (int(x) / 255 for x in re.findall(r"\d+", css)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _shot(page, name):
    """Screenshots for a person to look at, when PHI3LAB_BROWSER_SHOTS names a folder: the page, and each
    widget on its own (``<name>-<kind>-<n>.png``), scrolled into view."""
    folder = os.environ.get("PHI3LAB_BROWSER_SHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
        for kind in KINDS:
            widgets = page.locator(f".phi3lab-{kind}")
            for n in range(widgets.count()):
                widgets.nth(n).scroll_into_view_if_needed()
                widgets.nth(n).screenshot(path=str(Path(folder) / f"{name}-{kind}-{n}.png"))


def check_readable(page):
    """Widget text against the notebook's background, and heat chips against their own colour."""
    background = page.evaluate("getComputedStyle(document.querySelector('.jp-Notebook')).backgroundColor")
    text = page.evaluate("getComputedStyle(document.querySelector('.phi3lab-attention')).color")
    assert _contrast(text, background) >= 4.5, (text, background)
    for fg, bg in page.eval_on_selector_all(
        ".phi3lab-attention .phi3lab-chip[data-heat]:not([data-heat='0'])",
        "nodes => nodes.map(n => [getComputedStyle(n).color, getComputedStyle(n).backgroundColor])",
    ):
        assert _contrast(fg, bg) >= 4.5, (fg, bg)


def open_and_check(watch, url, expected):
    """Open a notebook, run every cell, and check every widget renders, reacts, shows its scales, draws
    noise uncoloured, outlines the sinks, draws the patch lens and runs no script a message carried."""
    watch.page.goto(url)
    _run_all(watch.page)
    check_widgets(watch.page)
    check_scales(watch.page)
    check_noise_is_uncoloured(watch.page)
    check_sinks(watch.page, expected)
    check_lens(watch.page, expected)
    check_nothing_fired(watch.page)
    return watch.page


def test_browser_jupyterlab_light_and_dark(browser, jupyter, expected):
    base, token = jupyter
    watch = Watch(browser)
    try:
        page = open_and_check(watch, f"{base}/lab/tree/lab.ipynb?token={token}", expected)
        check_readable(page)
        _shot(page, "lab-light")
        page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
        page.wait_for_function("document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
        page.wait_for_timeout(500)
        check_readable(page)
        check_scales(page)
        check_sinks(page, expected, toggle=False)
        _shot(page, "lab-dark")
        watch.check()
    finally:
        watch.close()


def _app_errors(browser, url) -> list[str]:
    """Console errors of the app itself: a notebook page with no widget (and no code) in it."""
    watch = Watch(browser)
    try:
        watch.page.goto(url)
        watch.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        watch.page.wait_for_timeout(1000)
        return list(watch.errors)
    finally:
        watch.close()


def test_browser_notebook7(browser, jupyter, expected):
    base, token = jupyter
    baseline = _app_errors(browser, f"{base}/notebooks/blank.ipynb?token={token}")
    watch = Watch(browser)
    try:
        _shot(open_and_check(watch, f"{base}/notebooks/notebook7.ipynb?token={token}", expected), "notebook7")
        watch.check(baseline)  # Notebook 7 logs a couple of its own errors on every notebook page
    finally:
        watch.close()


def test_browser_exported_page_is_explorable_offline(browser, tmp_path, expected):
    from phi3lab.views.widgets.export import export_html

    page_path = export_html(write_notebook(tmp_path / "my_analysis.ipynb"), execute=True)
    html = page_path.read_text()
    assert not re.search(r"""<script[^>]+src=["']https?:""", html)
    state = json.loads(
        re.search(r'<script type="application/vnd.jupyter.widget-state\+json">\s*(.*?)\s*</script>', html, re.S).group(
            1
        )
    )
    assert sum("_esm" in m["state"] for m in state["state"].values()) == 7
    watch = Watch(browser, offline=True)
    page = watch.page
    try:
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-phi3lab-widgets='rendered']", timeout=30_000)
        assert page.title() == "my_analysis"
        for kind in KINDS:
            assert page.locator(f".phi3lab-{kind} .phi3lab-note").count() >= 1  # says what the saved page holds
        assert "at most 256 KiB per widget" in page.locator(".phi3lab-attention .phi3lab-note").first.inner_text()
        check_scales(page)
        check_nothing_fired(page)
        assert page.locator(".phi3lab-chat .phi3lab-send").first.is_disabled()

        # attention: hovering another saved token repaints the strip from the saved rows
        strip = ".phi3lab-attention .phi3lab-strip .phi3lab-chip"
        before = _heat(page, strip)
        page.locator(".phi3lab-attention .phi3lab-strip .phi3lab-selectable").nth(2).hover()
        page.wait_for_function(
            """([sel, before]) => Array.from(document.querySelectorAll(sel))
            .map(n => n.dataset.heat || '').join(',') !== before""",
            arg=[strip, before],
            timeout=10_000,
        )
        assert "saved in this page" in page.locator(".phi3lab-attention .phi3lab-info").first.inner_text()

        # patches: another answer token redraws the overlay; hovering a cell names its token
        crops = page.locator(".phi3lab-patches canvas.phi3lab-canvas-crops").first
        page.wait_for_function("document.querySelector('.phi3lab-patches canvas').toDataURL().length > 1000")
        before = crops.evaluate("c => c.toDataURL()")
        current = page.eval_on_selector(".phi3lab-patches .phi3lab-targets .phi3lab-current", "n => n.dataset.target")
        page.locator(
            f".phi3lab-patches .phi3lab-targets .phi3lab-chip[data-target='{1 - int(current == '1')}']"
        ).first.click()
        page.wait_for_function(
            "b => document.querySelector('.phi3lab-patches canvas').toDataURL() !== b", arg=before, timeout=10_000
        )
        box = crops.bounding_box()
        crops.hover(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})
        page.wait_for_function(
            "document.querySelector('.phi3lab-patches .phi3lab-info[aria-live]').textContent.includes('token #')"
        )

        # sinks: outlined, the toggle answers from the saved payload; the lens at the saved layer, its slider
        assert (
            "Sinks masked and shown are both saved" in page.locator(".phi3lab-patches .phi3lab-note").first.inner_text()
        )
        assert "all 4 layers saved" in page.locator(".phi3lab-patches .phi3lab-note").nth(1).inner_text()
        check_sinks(page, expected)
        check_lens(page, expected, live=False)

        # attribution: the noise-level target is drawn uncoloured here too
        check_noise_is_uncoloured(page)
        _shot(page, "export-offline")
        watch.check()
    finally:
        watch.close()


# --- a widget's front end against its Python object, without Jupyter ---------------------------------

# A stand-in for anywidget's model in the page: state with change events (set fires them, as Backbone does),
# and what goes to Python kept in `sent`: custom messages as they are, saved changes as {"__state": {...}}.
MOCK_MODEL = """(state) => {
    const handlers = {};
    let unsaved = {};
    const fire = (key) => { for (const fn of handlers[`change:${key}`] || []) fn(); };
    const model = {
        sent: [],
        get: (key) => state[key],
        set: (key, value) => { state[key] = value; unsaved[key] = value; fire(key); },
        save_changes: () => { model.sent.push({ __state: unsaved }); unsaved = {}; },
        send: (message) => model.sent.push(message),
        on: (event, fn) => { (handlers[event] = handlers[event] || []).push(fn); },
        off: () => {},
        change: (changes) => { Object.assign(state, changes); for (const key of Object.keys(changes)) fire(key); },
    };
    return model;
}"""


class Bridge:
    """A phi3lab widget's ES module rendered in a page against its Python object: what the page sends reaches
    the object's message handler, and each trait the handler changes goes back as a change event."""

    def __init__(self, page, widget):
        self.page, self.widget = page, widget
        page.set_content('<div id="root"></div>')
        state = {k: v for k, v in widget.get_state().items() if not k.startswith("_") and k != "layout"}
        page.evaluate(
            """async ([source, state, make]) => {
                const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
                const module = await import(url);
                window.model = eval(make)(state);
                await module.default.render({ model: window.model, el: document.getElementById("root") });
            }""",
            [widget._esm, json.loads(json.dumps(state)), MOCK_MODEL],
        )

    def deliver(self) -> None:
        """Hand every message the page sent to the Python widget, and its changes back to the page."""
        for message in self.page.evaluate("window.model.sent.splice(0)"):
            before = self.widget.get_state()
            if "__state" in message:
                self.widget.set_state(message["__state"])  # what the comm does with a browser's changes
                before.update(message["__state"])  # the page has these already
            else:
                self.widget._dispatch(self.widget, message, [])
            after = self.widget.get_state()
            changes = {k: v for k, v in after.items() if before.get(k) != v and not k.startswith("_")}
            self.page.evaluate("changes => window.model.change(changes)", json.loads(json.dumps(changes)))


def test_the_chat_system_box_opens_again_after_new_chat(browser, tiny):
    """Once a conversation starts the system prompt is locked; New chat must unlock it (it stayed disabled)."""
    from phi3lab.views.widgets import ChatWidget

    box = ChatWidget(tiny, system="Answer briefly.", max_new_tokens=4)
    box.ask("What is 2 plus 3?")
    watch = Watch(browser)
    try:
        bridge = Bridge(watch.page, box)
        system = watch.page.locator("textarea.phi3lab-system")
        assert system.is_disabled() and "New chat" in system.get_attribute("title")
        assert watch.page.locator(".phi3lab-msg-user").inner_text() == "What is 2 plus 3?"
        watch.page.locator("button", has_text="New chat").click()
        bridge.deliver()
        assert box.messages == [] and system.is_enabled() and system.input_value() == "Answer briefly."
        watch.check()
    finally:
        watch.close()


def test_the_users_bubble_shows_a_picture_label_not_the_raw_image_tag(browser, vision, picture):
    """The model gets '<|image_1|>'; the person sees their own words and a labelled thumbnail."""
    import base64
    import io

    from phi3lab.views.widgets import ChatWidget

    box = ChatWidget(vision, max_new_tokens=4)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    box._dispatch(
        box, {"type": "image", "name": "shapes.png", "data": base64.b64encode(buffer.getvalue()).decode()}, []
    )
    box.ask("What colour is the triangle?")
    assert box.history[0]["content"].startswith("<|image_1|>")
    watch = Watch(browser)
    try:
        Bridge(watch.page, box)
        bubble = watch.page.locator(".phi3lab-msg-user")
        assert "<|image" not in bubble.inner_text() and "What colour is the triangle?" in bubble.inner_text()
        assert bubble.locator("img").count() == 1
        watch.check()
    finally:
        watch.close()


def test_the_attention_info_line_names_the_reduction_and_rollout_drops_the_head_focus(browser, tiny):
    """The info line said "mean over layer 0 × head 1" with max selected, and rollout kept a head focus it
    ignores."""
    from phi3lab.views.widgets import AttentionExplorer

    _, cache = tiny.generate_with_cache("What is 2 plus 3?", max_new_tokens=3, rollout=True)
    explorer = AttentionExplorer(cache)
    watch = Watch(browser)
    try:
        page = watch.page
        bridge = Bridge(page, explorer)
        info, focus = page.locator(".phi3lab-info").first, page.locator(".phi3lab-focus")

        def click(selector):
            page.locator(selector).click()
            bridge.deliver()

        click("canvas.phi3lab-thumb[data-layer='0'][data-head='1']")
        assert "mean over layer 0 × head 1" in info.inner_text() and focus.inner_text() == "layer 0, head 1"
        click(".phi3lab-toggles button[data-value='max']")
        assert "max over layer 0 × head 1" in info.inner_text()
        assert (
            page.locator("canvas.phi3lab-thumb.phi3lab-dim").count() == len(explorer.layers) * len(explorer.heads) - 1
        )
        click(".phi3lab-toggles button[data-value='rollout']")
        assert (
            explorer.focus == [-1, -1]
            and "rollout" in info.inner_text()
            and "layer 0 × head 1" not in info.inner_text()
        )
        assert focus.inner_text().startswith("rollout") and page.locator(".phi3lab-all").is_disabled()
        assert page.locator("canvas.phi3lab-thumb.phi3lab-dim").count() == 0
        watch.check()
    finally:
        watch.close()
