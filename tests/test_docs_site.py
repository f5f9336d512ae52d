"""The documentation site (``python3 tasks.py docs``, docs/build.py): README, the notebooks as stored,
an API reference generated from the code; built offline and read in Chromium with the network off.

One build serves the whole session (about 1.5 minutes on 2 cores); its tests are marked ``slow``, those
that open it in a browser also ``browser``.  The builder's parts (which modules get a page, which
resources count as loads from another host) are tested on their own, quickly.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from browser_support import Watch, serve_folder

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LAYER_PACKAGES = [
    "phi3lab.runtime",
    "phi3lab.prompts",
    "phi3lab.inspect",
    "phi3lab.attribution",
    "phi3lab.views",
    "phi3lab.safety",
    "phi3lab.serving",
    "phi3lab.models.phi3_v",
]


def _load_builder():
    spec = importlib.util.spec_from_file_location("phi3lab_docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


docs = _load_builder()


# --- the builder's parts (fast) -------------------------------------------------------------------------


def test_every_layer_package_and_its_public_modules_get_a_page():
    layers = docs.api_modules()
    found = [m for modules in layers.values() for m in modules]
    assert set(LAYER_PACKAGES) <= set(found)
    files = (ROOT / "phi3lab").rglob("*.py")
    walked = {p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__") for p in files}
    public = {m for m in walked if not any(part.startswith("_") for part in m.split(".")[1:])}
    expected = {m for m in public if not m.startswith("phi3lab.tiny") and m != "phi3lab.models"}
    assert set(found) == expected
    assert list(layers) == [layer for layer in docs.LAYERS if layer in layers]  # lowest layer first


def test_a_new_module_appears_without_an_edit(tmp_path, monkeypatch):
    package = tmp_path / "newlab"
    for folder in ("runtime", "inspect", "tiny", "_internal"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text(f'"""The {folder} layer."""\n')
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "inspect" / "hooks.py").write_text('"""One hook owner."""\n')
    (package / "inspect" / "_private.py").write_text("")
    (package / "tiny" / "train.py").write_text("")
    (package / "paths.py").write_text('"""Where files are."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert docs.api_modules("newlab") == {
        "foundation": ["newlab", "newlab.paths"],
        "runtime": ["newlab.runtime"],
        "inspect": ["newlab.inspect", "newlab.inspect.hooks"],
    }
    written = docs.write_api(tmp_path / "src", "newlab")
    page = (tmp_path / "src" / "api" / "newlab.inspect.hooks.rst").read_text()
    assert "newlab.inspect.hooks" in written and ".. automodule:: newlab.inspect.hooks" in page
    assert "One hook owner" in page.splitlines()[0]
    assert "   newlab.inspect.hooks" in (tmp_path / "src" / "api" / "index.rst").read_text()


def test_loads_from_other_hosts_are_found_and_links_are_not(tmp_path):
    (tmp_path / "page.html").write_text(
        '<script src="https://cdn.example/x.js"></script><link rel="stylesheet" href="//fonts.example/f.css">'
        '<img src="http://example.org/a.png"><a href="https://github.com/microsoft">a link</a>'
        '<script src="_static/local.js"></script><img src="data:image/png;base64,AAAA">'
    )
    (tmp_path / "style.css").write_text(
        "@import url('https://fonts.example/b.css'); .a { background: url(https://example.org/bg.png) }"
        ".b { background: url(images/ok.png) }"
    )
    found = docs.external_resources(tmp_path)
    assert sorted(u.split(": ", 1)[1] for u in found) == [
        "//fonts.example/f.css",
        "http://example.org/a.png",
        "https://cdn.example/x.js",
        "https://example.org/bg.png",
        "https://fonts.example/b.css",
    ]


def test_the_titles_drop_markup():
    assert (
        docs._plain("The object :func:`phi3lab.load` returns: a ``Lab``.") == "The object phi3lab.load returns: a Lab."
    )
    assert docs._plain("See :class:`~phi3lab.inspect.cache.Cache <Cache>`:") == "See phi3lab.inspect.cache.Cache"
    assert docs._rst_text("tags <|image_N|> → input_ids") == r"tags <\|image\_N\|> → input\_ids"  # no substitution


# --- one build per session -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    return docs.build(tmp_path_factory.mktemp("docs"))


def _outputs(notebook: Path, mime: str) -> int:
    cells = docs.static_widgets(notebook)["cells"]  # as staged: only phi3lab's widgets keep their live view
    return sum(mime in o.get("data", {}) for c in cells for o in c.get("outputs", ()))


def test_only_phi3labs_widgets_keep_their_view_and_the_notebook_is_untouched(tmp_path):
    state = {"a": {"state": {"_esm": "export default {}"}}, "b": {"state": {"children": []}}}
    view = "application/vnd.jupyter.widget-view+json"
    outputs = [{"data": {view: {"model_id": m}, "text/plain": m}, "output_type": "display_data"} for m in "ab"]
    outputs.append({"data": {view: {"model_id": "c"}}, "output_type": "display_data"})  # nothing else to show
    notebook = tmp_path / "n.ipynb"
    body = json.dumps(
        {
            "cells": [{"cell_type": "code", "outputs": outputs}],
            "metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": state}}},
        }
    )
    notebook.write_text(body)
    staged = docs.static_widgets(notebook)["cells"][0]["outputs"]
    assert [sorted(o["data"]) for o in staged] == [[view, "text/plain"], ["text/plain"], [view]]
    assert notebook.read_text() == body


@pytest.mark.slow
def test_site_has_the_readme_every_notebook_and_the_api(site):
    index = re.sub(r"<[^>]+>", "", (site / "index.html").read_text())  # text, without the highlighting's spans
    assert "Two commands" in index and "python3 tasks.py docs" in index and "python3 tasks.py demo" in index
    for notebook in NOTEBOOKS:
        page = site / "notebooks" / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.name}"
        shown = len(re.findall(r'<img[^>]+src="\.\./_images/[^"]+\.png"', page.read_text()))
        assert shown == _outputs(notebook, "image/png"), f"{notebook.name}: figures stored vs shown"
    for module in [m for modules in docs.api_modules().values() for m in modules]:
        assert (site / "api" / f"{module}.html").is_file(), f"no API page for {module}"
    lab_page = (site / "api" / "phi3lab.runtime.lab.html").read_text()
    assert 'id="phi3lab.runtime.lab.Lab.run_with_cache"' in lab_page
    assert "run_with_cache" in (site / "searchindex.js").read_text()


@pytest.mark.slow
def test_saved_widgets_are_in_the_pages_with_the_offline_renderer(site):
    for notebook in NOTEBOOKS:
        views = _outputs(notebook, "application/vnd.jupyter.widget-view+json")
        page = (site / "notebooks" / f"{notebook.stem}.html").read_text()
        assert page.count('type="application/vnd.jupyter.widget-view+json"') == views
        if views:
            assert 'type="application/vnd.jupyter.widget-state+json"' in page
            assert re.search(r'<script src="\.\./_static/phi3lab-embed\.js', page)
    assert docs.external_resources(site) == []


# --- in a browser, network off --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(site):
    with serve_folder(site) as base:
        yield base


WIDGETS = {
    "00_quickstart": ["chat"],
    "02_vision_analysis": ["patches"],
    "03_interpretability": ["attention", "attribution"],
}


@pytest.mark.slow
@pytest.mark.browser
def test_browser_pages_figures_and_saved_widgets_render_offline(browser, served):
    watch = Watch(browser)
    page = watch.page
    try:
        page.goto(f"{served}/index.html")
        assert "A Jupyter-first research workbench" in page.inner_text("article")
        for notebook in NOTEBOOKS:
            page.goto(f"{served}/notebooks/{notebook.stem}.html")
            page.wait_for_load_state("load")
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length"
            )
            assert broken == 0 and page.locator("article img").count() == _outputs(notebook, "image/png")
            kinds = WIDGETS.get(notebook.stem, [])
            if kinds:
                page.wait_for_selector("body[data-phi3lab-widgets='rendered']", timeout=30_000)
                for kind in kinds:
                    widget = page.locator(f".phi3lab-{kind}")
                    assert widget.count() >= 1, f"{notebook.stem}: no {kind} widget drawn"
                    assert (
                        widget.first.locator(".phi3lab-note:not([hidden])").count() >= 1
                    )  # says what it holds offline
                    assert widget.first.bounding_box()["height"] > 40
                assert "saved state is not in this page" not in page.inner_text("article")
            watch.shot(f"docs-{notebook.stem}")
        page.goto(f"{served}/notebooks/03_interpretability.html")
        page.wait_for_selector(".phi3lab-attention .phi3lab-chip[data-heat]:not([data-heat='0'])", timeout=30_000)
        page.goto(f"{served}/api/phi3lab.runtime.lab.html")
        assert page.locator("dt#phi3lab\\.runtime\\.lab\\.Lab").count() == 1
        watch.check()
    finally:
        watch.close()


@pytest.mark.slow
@pytest.mark.browser
def test_browser_search_finds_the_api_and_the_notebooks(browser, served):
    watch = Watch(browser)
    page = watch.page
    try:
        page.goto(f"{served}/index.html")
        page.fill("input[name='q']", "run_with_cache")
        page.press("input[name='q']", "Enter")
        page.wait_for_selector("#search-results ul.search li", timeout=30_000)
        results = page.locator("#search-results ul.search li a").all_inner_texts()
        assert any("run_with_cache" in r for r in results), results[:10]  # the API reference
        page.goto(f"{served}/search.html?q=over-refusal")
        page.wait_for_selector("#search-results ul.search li", timeout=30_000)
        results = page.locator("#search-results ul.search li a").all_inner_texts()
        assert any("Safety probing" in r for r in results), results[:10]  # a notebook
        page.goto(f"{served}/search.html?q=no_such_word_anywhere_xyz")
        page.wait_for_function(
            "document.querySelector('#search-results') && "
            "document.querySelector('#search-results').innerText.includes('did not match')",
            timeout=30_000,
        )
        watch.shot("docs-search")
        watch.check()
    finally:
        watch.close()
