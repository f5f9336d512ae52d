"""phi3lab.views.widgets without a browser or kernel: payloads, scales, sizes, interactions, bad input, static
forms, offline payloads and the exported page."""

import base64
import io
import json
import re
import types
from collections import Counter
from html import unescape as html_unescape

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image
from sink_support import crop_and_global, planted_sinks

from phi3lab.colours import DIVERGING, scale
from phi3lab.inspect.memory import MemoryLimitError
from phi3lab.inspect.sinks import DEFAULT_QUESTIONS
from phi3lab.views.widgets import AttentionExplorer, AttributionView, ChatWidget, PatchExplorer, _base
from phi3lab.views.widgets._base import OFFLINE_BYTES, MessageLog, display_mode, module_source, state_bytes, stylesheet
from phi3lab.views.widgets.attention import strip_items
from phi3lab.views.widgets.export import GENERATOR, export_html, main

QUESTION = "<|image_1|>\nWhat colour is the triangle?"


@pytest.fixture(scope="module")
def vcache(vision, picture):
    _, cache = vision.generate_with_cache(QUESTION, [picture], max_new_tokens=6)
    return cache


@pytest.fixture(scope="module")
def vsinks(vision, picture):
    """Sinks found across three questions, with one crop token and one global-view token planted as sinks
    (``sink_support``: the model has none of its own on this picture)."""
    questions = ["What colour is the triangle?", *DEFAULT_QUESTIONS[:2]]
    sinks = planted_sinks(vision, picture, crop_and_global(vision, picture, questions[0]), questions)
    assert {sinks.tokens[i].kind for i in sinks.indices} == {"crop", "global"}
    return sinks


@pytest.fixture(scope="module")
def last_rows(tiny):
    """A cache with only the last prompt row and the answer rows (positions='last')."""
    _, cache = tiny.generate_with_cache("What is 2 plus 3?", max_new_tokens=4, positions="last")
    return cache


@pytest.fixture(scope="module")
def tcache(tiny):
    _, cache = tiny.generate_with_cache("What is 2 plus 3?", max_new_tokens=4)
    return cache


def _bytes(b64):
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8).astype(float)


def decode(b64, s: dict) -> np.ndarray:
    """Values as the browser reads them (widgets/common.js valueOf): 0 is no signal."""
    q = _bytes(b64)
    f = (q - 128) / 127 if s["kind"] == "score" else q / 255
    return np.where(q == 0, 0.0, f * s["vmax"])


class Words:
    """The smallest object AttributionView reads: labels, target tokens, scores."""

    def __init__(self, scores, words=("What", "is", "2", "plus", "3")):
        self.units = [types.SimpleNamespace(label=w, image=None) for w in words]
        self.scores = torch.tensor(scores, dtype=torch.float64)
        self.target_tokens = [f"▁t{i}" for i in range(len(self.scores))]


# --- front end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["attention", "patches", "chat", "attribution"])
def test_each_module_is_self_contained_and_fetches_nothing(name):
    source = module_source(name)
    assert "export default" in source and "function h(" in source  # common.js inlined
    assert not re.search(r"^\s*import\s", source, re.M), "a leftover import would need a server to resolve"
    assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", source + stylesheet())


def test_static_display_mode_leaves_the_widget_out(tcache):
    explorer = AttentionExplorer(tcache)
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()[0]
    display_mode("static")
    try:
        data, _ = explorer._repr_mimebundle_()
        assert set(data) == {"text/plain", "text/html"} and "phi3lab-legend" in data["text/html"]
    finally:
        display_mode("live")
    with pytest.raises(ValueError, match="display mode must be one of"):
        display_mode("fancy")


# --- attention explorer ---------------------------------------------------------------------------


def test_strip_folds_each_image_into_crop_and_global_chips(vcache):
    items, chip_of_key = strip_items(vcache)
    image = [it for it in items if it[1] == "image"]
    rows, cols = vcache.inputs.images[0].layout.grid
    assert [it[0] for it in image] == [f"img1 crop {k}" for k in range(1, rows * cols + 1)] + ["img1 global", "img1 ⏎"]
    assert sum(it[4] for it in image) == vcache.inputs.images[0].num_tokens
    assert len(chip_of_key) == vcache.num_tokens and chip_of_key.max() == len(items) - 1


def test_explorer_heat_is_the_caches_mean_attention_summed_per_chip(vcache):
    explorer = AttentionExplorer(vcache)
    row = vcache.answer_rows[2]
    explorer.show(row=row)
    expected = explorer.view.chip_sums(vcache.mean_attention(rows=[row]).numpy())
    top = explorer.scale["vmax"]
    assert top == pytest.approx(expected.max()) and explorer.scale["kind"] == "share"
    assert np.allclose(decode(explorer.heat, explorer.scale), expected, atol=top / 255)
    explorer.show(row=row, layer=1, head=2)
    expected = explorer.view.chip_sums(vcache.attention(1)[0, 2, row].numpy())
    assert np.allclose(decode(explorer.heat, explorer.scale), expected, atol=explorer.scale["vmax"] / 255)


def test_the_grid_has_one_scale_for_every_head(vcache):
    explorer = AttentionExplorer(vcache)
    thumbs = decode(explorer.thumbs, explorer.thumb_scale).reshape(len(explorer.layers) * len(explorer.heads), -1)
    peaks = np.array(explorer.thumb_peaks)
    assert explorer.thumb_scale["vmax"] == pytest.approx(peaks.max(), rel=1e-3)
    assert np.allclose(thumbs.max(1), peaks, atol=peaks.max() / 255)  # a weak head stays weak, not stretched
    assert len(_bytes(explorer.thumbs)) == len(peaks) * explorer.thumb_bins == len(peaks) * len(explorer.items)


def test_an_interaction_sends_only_the_new_row(vcache):
    explorer = AttentionExplorer(vcache)
    log = MessageLog(explorer)
    before = explorer.heat
    explorer.set_state({"row": vcache.answer_rows[-1]})  # as a hover in the browser arrives
    sent = log.updates()
    assert sent["heat"] != before and set(sent) <= {
        "row",
        "heat",
        "scale",
        "thumbs",
        "thumb_bins",
        "thumb_scale",
        "thumb_peaks",
        "info",
        "error",
    }
    assert [m["method"] for m in log.messages] == ["echo_update", "update"]  # one batched update
    assert log.bytes() < 4096 < state_bytes(explorer)


def test_rows_are_read_on_demand_and_nothing_is_copied_out_of_the_cache(vcache):
    explorer = AttentionExplorer(vcache)
    held = sum(v.nbytes for v in vars(explorer.view).values() if isinstance(v, np.ndarray))
    held += sum(a.nbytes for a in (explorer.view._last or (None, ()))[1:] if isinstance(a, np.ndarray))
    one_layer = vcache.attention(0).numel() * 4
    assert held < one_layer / 20, f"the explorer holds {held} bytes; one layer's map is {one_layer}"


def test_the_info_line_says_the_aggregation_shown(vcache):
    explorer = AttentionExplorer(vcache)
    explorer.show(row=vcache.answer_rows[0], layer=0, head=1)
    assert "mean over layer 0 × head 1" in explorer.info
    before = explorer.heat
    explorer.agg = "max"  # one head: max equals mean, only the words change
    assert explorer.heat == before and "max over layer 0 × head 1" in explorer.info


def test_rollout_clears_the_head_focus_and_choosing_a_head_goes_back_to_mean(tiny):
    _, full = tiny.generate_with_cache("What is 2 plus 3?", max_new_tokens=3, rollout=True)
    explorer = AttentionExplorer(full)
    explorer.show(layer=1, head=2)
    explorer.agg = "rollout"
    assert explorer.focus == [-1, -1] and "focus does not apply" in explorer.info and explorer.error == ""
    expected = explorer.view.chip_sums(full.rollout([explorer.row]).numpy()[0])
    assert np.allclose(decode(explorer.heat, explorer.scale), expected, atol=explorer.scale["vmax"] / 255)
    explorer.set_state({"focus": [0, 1]})  # a thumbnail clicked in rollout mode
    assert explorer.agg == "mean" and "mean over layer 0 × head 1" in explorer.info


def test_max_differs_from_mean_and_rollout_needs_every_row(last_rows):
    explorer = AttentionExplorer(last_rows)
    mean = explorer.heat
    explorer.agg = "max"
    assert explorer.heat != mean and explorer.error == ""
    explorer.agg = "rollout"  # this cache has the answer rows only: refused, with the fix, back to mean
    assert explorer.agg == "mean" and "rollout=True" in explorer.error and explorer.heat == mean


def test_layers_all_is_accepted_and_other_layers_are_checked(vcache):
    assert AttentionExplorer(vcache, layers="all").layers == list(vcache.layers)
    assert AttentionExplorer(vcache, layers=1).layers == [1]
    with pytest.raises(ValueError, match=r"layers \[7\] were not captured.*layers='all'"):
        AttentionExplorer(vcache, layers=[7])
    with pytest.raises(TypeError, match="layers must be 'all', an int or a list of ints, got 'al'"):
        AttentionExplorer(vcache, layers="al")


def test_the_memory_preflight_refuses_before_reading(vcache):
    with pytest.raises(MemoryLimitError, match=r"AttentionExplorer over 4 layer.*pass layers=\[\.\.\.\].*max_bytes="):
        AttentionExplorer(vcache, max_bytes=1024)


def test_explorer_refuses_what_it_cannot_show(vcache, last_rows):
    with pytest.raises(TypeError, match="run_with_cache"):
        AttentionExplorer("not a cache")
    explorer = AttentionExplorer(last_rows)
    explorer.row = 99  # no such row (positions='last' kept 5)
    assert "no captured attention" in explorer.error and explorer.heat  # the view stays as it was


def test_the_offline_payload_is_each_rows_mean_within_the_cap(vcache):
    explorer = AttentionExplorer(vcache)
    offline = explorer.offline
    assert offline["rows"] == explorer.view.rows and len(str(offline)) < OFFLINE_BYTES  # a small cache: all of it
    for row in (explorer.view.rows[0], vcache.answer_rows[-1]):
        expected = explorer.view.chip_sums(vcache.mean_attention(rows=[row]).numpy())
        saved = explorer.view.offline_row(row)
        kept = saved > 0
        assert kept.sum() == min(offline["top"], (expected >= 1e-6).sum())
        assert np.allclose(saved[kept], expected[kept], atol=expected.max() / 255)
        if (~kept).any():  # the strongest chips are the ones kept
            assert expected[~kept].max() <= expected[kept].min() + 1e-9


def test_a_small_cap_keeps_the_answer_rows_and_spreads_the_rest(vcache, monkeypatch):
    from phi3lab.views.widgets import attention

    monkeypatch.setattr(attention, "OFFLINE_BYTES", 2 * 1024)
    view = attention.AttentionView(vcache)
    rows = view.offline["rows"]
    assert set(vcache.answer_rows) <= set(rows) and len(rows) < len(view.rows)
    assert len(str(view.offline)) < 2 * 1024 + 512


def test_explorer_static_forms(tcache):
    explorer = AttentionExplorer(tcache)
    text = explorer.to_text()
    assert text.startswith("row at position") and "most attended" in text
    page = explorer._repr_html_()
    assert "<script" not in page and page.count("phi3lab-chip") == len(explorer.items)
    assert "phi3lab-legend" in page and "share of attention" in page
    data, _ = explorer._repr_mimebundle_()
    assert {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"} <= set(data)


# --- patch explorer -------------------------------------------------------------------------------


def test_patch_heat_equals_the_caches_image_heat_on_one_scale(vcache):
    explorer = PatchExplorer(vcache)
    for target in (0, 3):
        explorer.show(target=target)
        expected = vcache.image_heat(0, rows=[vcache.answer_rows[target]])
        top = explorer.scale["vmax"]
        assert top == pytest.approx(max(expected.crops.max(), expected.global_view.max()))
        crops = decode(explorer.heat_crops, explorer.scale).reshape(expected.crops.shape)
        glob = decode(explorer.heat_global, explorer.scale).reshape(12, 12)
        assert np.allclose(crops, expected.crops, atol=top / 255)
        assert np.allclose(glob, expected.global_view, atol=top / 255)


def test_patch_explorer_opens_on_the_token_that_looks_at_the_picture_most(vcache):
    explorer = PatchExplorer(vcache)
    totals = [vcache.image_heat(0, rows=[r]).total for r in vcache.answer_rows]
    assert explorer.target == int(np.argmax(totals)) and explorer.source == "attention"


def test_patch_positions_follow_the_image_token_order(vcache):
    from phi3lab.prompts.patches import image_tokens

    explorer = PatchExplorer(vcache)
    span = vcache.inputs.images[0]
    positions = np.frombuffer(base64.b64decode(explorer.crop_pos), dtype="<u4")
    tokens = [t for t in image_tokens(span.width, span.height, span.num_crops) if t.kind == "crop"]
    assert sorted(positions.tolist()) == [span.start + t.index for t in tokens]
    assert explorer.geometry["grid"] == list(span.layout.grid)


def test_patch_interaction_is_small_and_changes_the_overlay(vcache):
    explorer = PatchExplorer(vcache)
    log = MessageLog(explorer)
    before = explorer.heat_crops
    explorer.target = (explorer.target + 1) % len(explorer.targets)
    assert log.updates()["heat_crops"] != before and log.bytes() < 8192
    assert state_bytes(explorer) < 512 * 1024


def test_patch_offline_payload_holds_every_answer_token(vcache, vsinks):
    explorer = PatchExplorer(vcache, found=vsinks)
    saved, shown = explorer.offline["payloads"]["attention"], explorer.offline["shown"]
    assert sorted(map(int, saved)) == sorted(map(int, shown)) == list(range(len(explorer.targets)))
    explorer.show(target=2)
    assert saved["2"]["heat_crops"] == explorer.heat_crops and saved["2"]["scale"] == explorer.scale
    explorer.show(target=2, sinks="show")
    assert shown["2"]["heat_global"] == explorer.heat_global and shown["2"]["sink_info"] == explorer.sink_info


# --- attention sinks in the patch explorer ----------------------------------------------------------


def _cell_indices(heat, view, width):
    return sorted(r * width + c for v, r, c in heat.sink_cells() if v == view)


def test_patch_explorer_masks_and_outlines_the_sinks_image_heat_masks(vcache, vsinks):
    from phi3lab.views.plotting import SINK_OUTLINE

    explorer = PatchExplorer(vcache, found=vsinks)
    target = explorer.target
    row = vcache.answer_rows[target]
    masked = vcache.image_heat(0, rows=[row], found=vsinks)
    assert masked.sinks and masked.masked, "the tiny model's picture has sinks; without them this test proves nothing"
    cells = explorer.sink_cells
    assert cells["colour"] == SINK_OUTLINE
    assert sorted(cells["global"]) == _cell_indices(masked, "global", 12)
    assert sorted(cells["crops"]) == _cell_indices(masked, "crops", masked.crops.shape[1])
    assert explorer.sinks == "mask"
    glob = decode(explorer.heat_global, explorer.scale).reshape(12, 12)
    assert np.allclose(glob, masked.global_view, atol=explorer.scale["vmax"] / 255)
    n = len(masked.sinks)
    assert f"{n} sink token{'s' if n > 1 else ''}" in explorer.sink_info and "masked" in explorer.sink_info
    assert f"holding {masked.masked_mass:.3f} of this row's attention" in explorer.sink_info

    explorer.sinks = "show"
    shown = vcache.image_heat(0, rows=[row], sinks="show", found=vsinks)
    glob = decode(explorer.heat_global, explorer.scale).reshape(12, 12)
    assert explorer.scale["vmax"] == pytest.approx(max(shown.crops.max(), shown.global_view.max()))
    assert np.allclose(glob, shown.global_view, atol=explorer.scale["vmax"] / 255)
    assert "shown" in explorer.sink_info and f"holding {masked.masked_mass:.3f}" in explorer.sink_info
    assert "sink token(s) masked" not in explorer.to_text() and "shown, holding" in explorer.to_text()

    explorer.show(target=target, source="rollout", sinks="mask")
    rolled = vcache.image_heat(0, rows=[row], source="rollout", found=vsinks)
    top = explorer.scale["vmax"]
    assert top == pytest.approx(max(rolled.crops.max(), rolled.global_view.max()), rel=1e-5)
    assert np.allclose(decode(explorer.heat_global, explorer.scale).reshape(12, 12), rolled.global_view, atol=top / 255)
    assert "of this row's rolled-out attention" in explorer.sink_info


def test_on_one_questions_evidence_the_patch_explorer_masks_nothing_and_says_why(vcache, vsinks):
    explorer = PatchExplorer(vcache)  # the cache's own sinks: one question, no massive activations
    row = vcache.answer_rows[explorer.target]
    own = vcache.sinks(0)
    assert not own.indices and own.candidates, "one question gives candidates here; without them this proves nothing"
    assert explorer.sink_cells["crops"] == explorer.sink_cells["global"] == [] and explorer.offline["shown"] == {}
    raw = vcache.image_heat(0, rows=[row], sinks="show")
    glob = decode(explorer.heat_global, explorer.scale).reshape(12, 12)
    assert np.allclose(glob, raw.global_view, atol=explorer.scale["vmax"] / 255)
    assert explorer.scale["vmax"] == pytest.approx(max(raw.crops.max(), raw.global_view.max()))
    k = len(own.candidates)
    for text in (explorer.sink_info, explorer.to_text()):
        assert "none masked — the evidence is one question (1 question × 4 layers)" in text
        assert f"{k} candidate token{'s' if k != 1 else ''}" in text
        assert "found=find_sinks(lab, picture=picture)" in text
    assert PatchExplorer(vcache, found=vsinks).sink_cells["global"], "across questions the sinks are masked"


def test_the_patch_explorer_refuses_sinks_of_another_picture(vision, vcache, vsinks):
    with pytest.raises(ValueError, match="found must be a Sinks from find_sinks"):
        PatchExplorer(vcache, found=[189])
    _, other = vision.generate_with_cache(QUESTION, [Image.new("RGB", (700, 300), "white")], max_new_tokens=2)
    with pytest.raises(
        ValueError, match=r"belong to picture 1 with 313 tokens of another size, not picture 1 \(700×300, 313 tokens\)"
    ):
        PatchExplorer(other, found=vsinks)


def test_a_bad_sinks_value_in_the_browser_falls_back_to_masked(vcache):
    explorer = PatchExplorer(vcache)
    explorer.sinks = "hide"
    assert explorer.sinks == "mask" and "sinks must be 'mask'" in explorer.error


# --- the patch lens in the patch explorer ---------------------------------------------------------


def lens_cells(state):
    """The lens state as the browser reads it: per held layer, the pieces and probabilities of every cell."""
    held = len(state["held"])
    index = np.frombuffer(base64.b64decode(state["index"]), dtype="<u1" if state["width"] == 1 else "<u2")
    probs = _bytes(state["probs"]).reshape(held, state["cells"]) / 255
    pieces = [[state["vocab"][i] for i in row] for row in index.reshape(held, state["cells"])]
    return dict(zip(state["held"], pieces)), dict(zip(state["held"], probs))


def expected_lens(lens, layer):
    """The patch lens's pieces and probabilities at ``layer``, crop cells then global-view cells, row by row."""
    k = lens.layers.index(layer)
    order = sorted((t.kind != "crop", t.row, t.col, t.index) for t in lens.tokens if t.kind in ("crop", "global"))
    return [lens.pieces[k][i] for *_, i in order], np.array([lens.probs[k, i] for *_, i in order])


def test_the_lens_state_is_the_patch_lens_of_the_chosen_layer(vcache):
    from phi3lab.inspect.patch_lens import patch_lens

    lens = patch_lens(vcache)
    explorer = PatchExplorer(vcache, source="lens", lens_layer=2)
    assert explorer.source == "lens" and explorer.lens_layer == 2 and explorer.lens["complete"]
    pieces, probs = lens_cells(explorer.lens)
    assert sorted(pieces) == lens.layers
    for layer in lens.layers:
        want_pieces, want_probs = expected_lens(lens, layer)
        assert pieces[layer] == want_pieces
        assert np.abs(probs[layer] - want_probs).max() <= 0.5 / 255 + 1e-7
    assert pieces[2] != pieces[3], "two layers that read alike would not test the slider"
    assert len(explorer.lens["vocab"]) == len({p for layer in lens.layers for p in pieces[layer]})

    most = Counter(pieces[2]).most_common(1)[0][0]  # over both views, as the widget counts
    text = explorer.to_text()
    assert text.startswith("patch lens at layer 2: ") and f"most read {most!r} ×" in text
    assert lens.to_text(2, "global") in text  # and the global view's grid, as the lens prints it
    log = MessageLog(explorer)
    explorer.lens_layer = -1  # the last layer: every layer is already in the browser, only the line travels
    assert explorer.lens_layer == 3 and explorer.info.startswith("patch lens at layer 3")
    assert "lens" not in log.updates() and log.bytes() < 2048
    assert "patch lens at layer 3" in explorer.to_text()


def test_the_lens_is_read_once_when_first_chosen(vcache, monkeypatch):
    from phi3lab.inspect import patch_lens as module

    calls = []
    real = module.patch_lens
    monkeypatch.setattr(module, "patch_lens", lambda *a, **k: calls.append(1) or real(*a, **k))
    explorer = PatchExplorer(vcache)
    assert explorer.lens == {} and calls == [] and "lens" in explorer.sources
    explorer.source = "lens"
    explorer.lens_layer = 1
    explorer.source = "attention"
    explorer.source = "lens"
    assert calls == [1] and explorer.error == ""
    assert "patch lens at layer 1" in explorer.to_text()


def test_a_lens_over_the_cap_holds_one_layer_and_the_kernel_sends_the_next(vcache, monkeypatch):
    from phi3lab.inspect.patch_lens import patch_lens
    from phi3lab.views.widgets import patches

    monkeypatch.setattr(patches, "OFFLINE_BYTES", 8 * 1024)
    lens = patch_lens(vcache)
    explorer = PatchExplorer(vcache, source="lens", lens_layer=1)
    every = explorer.view.lens_state(1, room=10**9)
    assert every["complete"] and len(json.dumps(every)) + len(json.dumps(explorer.offline)) > 8 * 1024
    assert explorer.lens["held"] == [1] and not explorer.lens["complete"]
    explorer.lens_layer = 3
    assert explorer.lens["held"] == [3] and explorer.error == ""
    pieces, _ = lens_cells(explorer.lens)
    assert pieces[3] == expected_lens(lens, 3)[0]


def test_the_lens_refuses_what_it_cannot_show(vision, picture, vcache):
    _, attention_only = vision.generate_with_cache(QUESTION, [picture], max_new_tokens=2, sites=["pattern"])
    explorer = PatchExplorer(attention_only)
    assert "lens" not in explorer.sources
    explorer.source = "lens"
    assert explorer.source == "attention" and "reads resid_post" in explorer.error
    explorer = PatchExplorer(vcache, source="lens")
    explorer.lens_layer = 9
    assert explorer.lens_layer == 3 and "lens_layer 9 is not a layer the patch lens reads" in explorer.error


def test_the_lens_static_form_prints_every_cell_without_a_script(vcache):
    from phi3lab.inspect.patch_lens import patch_lens

    explorer = PatchExplorer(vcache, source="lens", lens_layer=0)
    page = explorer.to_html()
    pieces, _ = expected_lens(patch_lens(vcache), 0)
    assert "<script" not in page and page.count("<img") == 2 and "patch lens at layer 0" in page
    titles = re.findall(r'<span title="([^"]*) p=([0-9.]+)"', page)
    assert [html_unescape(t) for t, _ in titles] == pieces


def test_patch_explorer_refuses_bad_input(vcache, tcache):
    with pytest.raises(ValueError, match="phi3lab-tiny is a text model.*tiny-vision"):
        PatchExplorer(tcache)
    with pytest.raises(IndexError, match="image 1 does not exist; this prompt has 1 image"):
        PatchExplorer(vcache, image=1)
    with pytest.raises(TypeError, match="run_with_cache"):
        PatchExplorer(None)
    explorer = PatchExplorer(vcache)
    explorer.source = "attribution"  # none was given
    assert explorer.source == "attention" and "attribution" in explorer.error
    explorer.layer = 9
    assert "layer 9 was not captured" in explorer.error
    with pytest.raises(
        IndexError, match=r"lens_layer 9 is not a layer the patch lens reads; it reads layers \[0, 1, 2, 3\]"
    ):
        PatchExplorer(vcache, lens_layer=9)
    with pytest.raises(ValueError, match="source must be one of"):
        PatchExplorer(vcache, source="heat")
    with pytest.raises(ValueError, match="sinks must be 'mask'.* or 'show'"):
        PatchExplorer(vcache, sinks="hide")


def test_patch_static_forms_show_both_views_and_the_scale(vcache):
    explorer = PatchExplorer(vcache)
    page = explorer.to_html()
    assert page.count("<img") == 2 and "global view" in page and "<script" not in page and "phi3lab-legend" in page
    assert "top crops cells" in explorer.to_text() and "share of attention per cell: 0 …" in explorer.to_text()


def test_the_overlay_keeps_the_pictures_colours_where_the_heat_is(vcache):
    from phi3lab.views.widgets.patches import overlay_png

    orange = Image.new("RGB", (100, 100), (255, 140, 0))
    values = np.zeros((100, 100))
    values[:50] = 1.0  # the top half has all the attention
    png = overlay_png(orange, values, scale(values, kind="share", label=""))
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(png.split(",")[1]))).convert("RGB")).astype(int)
    assert tuple(pixels[10, 50]) == (255, 140, 0), "where the heat is, the picture must be exactly as it is"
    veiled = pixels[90, 50]
    assert veiled.sum() < 255 + 140 and veiled[0] > veiled[1] > veiled[2], "a veil darkens but keeps the hue order"


# --- chat -----------------------------------------------------------------------------------------


def test_chat_streams_and_keeps_history_as_a_session_does(tiny):
    box = ChatWidget(tiny, system="Answer briefly.", max_new_tokens=8)
    log = MessageLog(box)
    box.ask("What is 2 plus 3?")
    deltas = [m["content"]["text"] for m in log.messages if m.get("method") == "custom"]
    reference = tiny.session(system="Answer briefly.").chat("What is 2 plus 3?", stream=False, max_new_tokens=8)
    assert "".join(deltas).strip() == reference.text and len(deltas) > 1
    assert box.history == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": reference.text},
    ]
    assert re.search(
        r"prompt \+ \d+ new tokens · first token after \d+ ms · [\d.]+ tokens/s", box.messages[-1]["stats"]
    )
    assert not box.busy


def test_chat_stop_ends_the_answer_early(tiny):
    box = ChatWidget(tiny, max_new_tokens=64)
    original = box.send

    def stop_after_first(content, buffers=None):
        original(content, buffers)
        box.stop()

    box.send = stop_after_first
    box.ask("Tell me a long story about a dragon.")
    assert box.messages[-1]["stats"].endswith("stopped")
    assert int(re.search(r"(\d+) new tokens", box.messages[-1]["stats"]).group(1)) <= 3


def test_chat_errors_show_in_the_widget_and_keep_nothing(tiny):
    box = ChatWidget(tiny)
    box.ask("Hi<|end|>")  # a typed control token is refused
    assert "<|end|>" in box.error and box.messages == [] and box.history == [] and not box.busy
    with pytest.raises(ValueError, match="text model"):
        box.attach(Image.new("RGB", (8, 8)))
    box._dispatch(box, {"type": "nonsense"}, [])
    assert "unknown message" in box.error


@pytest.mark.parametrize("text", [None, 42, ["Hi"]])
def test_a_send_without_text_sends_nothing(tiny, text):
    box = ChatWidget(tiny, max_new_tokens=4)
    box._dispatch(box, {"type": "send", "text": text}, [])
    assert box.messages == [] and box.history == [] and "must be text" in box.error and not box.busy


def test_chat_uploaded_picture_becomes_a_tag_for_the_model_and_a_labelled_thumbnail(vision, picture):
    box = ChatWidget(vision, max_new_tokens=8)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    box._dispatch(box, {"type": "image", "name": "shapes.png", "data": data}, [])
    assert [p["name"] for p in box.pending] == ["shapes.png"]
    box.ask("What colour is the triangle?")
    assert box.history[0]["content"] == "<|image_1|>\nWhat colour is the triangle?" and box.pending == []
    shown = box.messages[0]
    assert shown["content"] == "What colour is the triangle?" and "<|image" not in box.to_text() + box.to_html()
    assert shown["image_labels"] == ["image 1"] and len(box.session.images) == 1 and shown["images"]
    assert "user: [image 1] What colour" in box.to_text()
    box._dispatch(box, {"type": "image", "name": "notes.txt", "data": base64.b64encode(b"hello").decode()}, [])
    assert "not a picture" in box.error


def test_chat_state_and_static_forms(tiny):
    box = ChatWidget(tiny, max_new_tokens=4)
    assert state_bytes(box) < 64 * 1024 and box.vision is False
    box.ask("Hi")
    assert box.to_text().startswith("chat with phi3lab-tiny: 2 message(s)")
    assert "<script" not in box.to_html() and "Hi" in box.to_html()
    box.reset()
    assert box.messages == [] and box.history == []


def test_the_static_form_escapes_everything_a_message_carries(tiny):
    box = ChatWidget(tiny)
    hostile = 'x" onerror="alert(4)'
    box.messages = [
        {"role": "user", "content": "<img src=x onerror=alert(1)>", "images": [hostile, "data:image/png;base64,AAAA"]},
        {"role": '<b onclick="alert(2)">', "content": "hi", "stats": "<script>alert(3)</script>"},
    ]
    page = box.to_html()
    assert "onerror=" not in page.replace("onerror=alert(1)&gt;", "") and "<script" not in page
    assert "<b onclick" not in page and "not a picture URL" in page and page.count("<img") == 1


@pytest.mark.parametrize(
    "kwargs, error, says",
    [
        (dict(max_new_tokens="abc"), TypeError, "max_new_tokens must be an integer"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens must be at least 1"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a finite number"),
        (dict(temperature="hot"), TypeError, "temperature must be a number"),
        (dict(system=42), TypeError, "system must be a string"),
    ],
)
def test_chat_options_are_checked_with_the_fix(tiny, kwargs, error, says):
    with pytest.raises(error, match=says) as info:
        ChatWidget(tiny, **kwargs)
    assert "pass e.g. ChatWidget(lab, " in str(info.value)


# --- attribution view -----------------------------------------------------------------------------


def test_attribution_view_reads_the_minimal_protocol_and_opens_on_the_strongest_token():
    view = AttributionView(Words([[0.1, -0.2, 1.0, 0.3, 0.9], [0.0, 0.0, 0.1, 0.0, -4.0]]))
    assert view.token == 1 and view.scale["vmax"] == 4.0  # ▁t1 holds the largest |score|
    log = MessageLog(view)
    view.token = 0
    assert decode(view.scores, view.scale) == pytest.approx([0.1, -0.2, 1.0, 0.3, 0.9], abs=1 / 127)
    assert log.bytes() < 1024 and "'▁t0'" in view.info
    view.token = 5
    assert "token 5 does not exist" in view.error and view.token == -1
    with pytest.raises(TypeError, match="has no 'units'"):
        AttributionView(object())


def test_noise_level_scores_are_no_signal():
    view = AttributionView(Words([[2.3e-6, -1.1e-6, 0.0, 1e-7, -2e-6], [0.5, -3.0, 0.0, 0.0, 0.0]]))
    view.token = 0  # the '▁is' of notebook 03: ±2.3e-6, rounding noise
    assert set(_bytes(view.scores)) == {0} and not view.scale["signal"]
    assert "no signal" in view.info and "1.5e-05" in view.info
    assert view.to_html().count("dashed") >= 5 and "background:" not in view.to_html().split("phi3lab-legend")[0]
    view.token = 1
    chips = re.findall(r"background:(#[0-9a-f]{6})", view.to_html())
    assert chips[:2] == [scale([0.5, -3.0], kind="score", label="").colour(0.5), DIVERGING[0]]


def test_nan_and_infinite_scores_are_drawn_as_no_signal_not_an_error():
    view = AttributionView(Words([[np.nan, np.inf, 1.0, -np.inf, 0.5]]))
    assert view.scale["vmax"] == 1.0 and "3 score(s) are NaN or infinite" in view.info
    page = view.to_html()
    assert "nan" in page and page.count("dashed") >= 3
    assert "no signal" in view.to_text()


def test_words_and_picture_regions_share_one_scale():
    picture = Image.new("RGB", (40, 40), (255, 140, 0))
    span = types.SimpleNamespace(index=0, image=picture, width=40, height=40)
    units = [types.SimpleNamespace(label="square?", image=None)] + [
        types.SimpleNamespace(
            label=f"r{k}", image=0, box=(20 * (k % 2), 20 * (k // 2), 20 * (k % 2) + 20, 20 * (k // 2) + 20)
        )
        for k in range(4)
    ]
    attr = types.SimpleNamespace(
        units=units,
        target_tokens=["▁red"],
        scores=torch.tensor([[23.5, 1.0, 0.0, 0.0, -0.5]]),
        inputs=types.SimpleNamespace(images=[span]),
    )
    view = AttributionView(attr)
    assert view.scale["vmax"] == 23.5 and view.pictures[0]["regions"][0] == [0.0, 0.0, 0.5, 0.5, 1]
    scores = decode(view.scores, view.scale)
    assert scores[1] == pytest.approx(1.0, abs=23.5 / 127) and scores[2] == 0  # region 1 is faint, not saturated
    png = re.search(r'src="data:image/png;base64,([^"]+)"', view.to_html()).group(1)
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")).astype(int)
    assert pixels[10, 10].sum() < 255 + 140 - 100, "a +1.0 region beside a +23.5 word stays nearly veiled"


@pytest.mark.slow
def test_attribution_view_of_a_real_attribution(vision, picture, vcache):
    attribution = pytest.importorskip("phi3lab.attribution")
    attr = attribution.attribute(vision, QUESTION, [picture], units=["words", "image-regions"])
    view = AttributionView(attr)
    assert view.targets == list(attr.target_tokens) and len(view.pictures[0]["regions"]) > 0
    peaks = attr.scores.abs().max(1).values
    assert view.token == int(peaks.argmax())
    assert view.scale["vmax"] == pytest.approx(float(attr.row(view.token).abs().max()), rel=1e-6)
    assert "phi3lab-legend" in view.to_html()
    explorer = PatchExplorer(vcache, attribution=attr)
    assert explorer.source == "attribution" and explorer.scale["kind"] == "score" and explorer.error == ""
    grids = [max(np.abs(c).max(), np.abs(g).max()) for c, g in explorer.view._maps]
    assert explorer.target == int(np.argmax(grids))
    assert sorted(explorer.offline["sources"]) == ["attention", "attribution"]


# --- the exported page ----------------------------------------------------------------------------


def _notebook(path, cells=("print('hi')",)):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def test_the_page_is_titled_with_the_notebooks_name_and_marked(tmp_path):
    page = export_html(_notebook(tmp_path / "02_vision_analysis.ipynb"))
    text = page.read_text()
    assert "<title>02_vision_analysis</title>" in text and GENERATOR in text
    assert export_html(tmp_path / "02_vision_analysis.ipynb") == page  # our own page may be replaced


def test_the_page_is_written_atomically_and_a_failure_leaves_the_old_page(tmp_path, monkeypatch):
    notebook = _notebook(tmp_path / "a.ipynb")
    page = export_html(notebook)
    before = page.read_text()

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    import os

    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        export_html(_notebook(tmp_path / "a.ipynb", ("print('changed')",)))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert page.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "a.ipynb"]


def test_a_file_that_is_not_our_page_is_never_replaced_unless_asked(tmp_path):
    notebook = _notebook(tmp_path / "a.ipynb")
    notes = tmp_path / "notes.html"
    notes.write_text("<p>my notes</p>")
    with pytest.raises(FileExistsError, match="not a page phi3lab's export wrote.*--force"):
        export_html(notebook, notes)
    assert notes.read_text() == "<p>my notes</p>"
    export_html(notebook, notes, overwrite=True)
    assert GENERATOR in notes.read_text()
    with pytest.raises(ValueError, match="would overwrite the notebook"):
        export_html(notebook, notebook)


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda d: [str(d / "missing.ipynb")], "missing.ipynb does not exist; pass the path of an .ipynb file"),
        (lambda d: [str(_torn(d))], "torn.ipynb is not valid JSON"),
        (lambda d: [str(_notebook(d / "a.ipynb")), "-o", str(d / "no" / "such" / "a.html")], "mkdir -p"),
        (lambda d: [str(_list_notebook(d))], "is not a valid notebook"),
    ],
)
def test_the_export_command_says_what_is_wrong_in_one_line(tmp_path, capsys, make, says):
    assert main(make(tmp_path)) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _torn(folder):
    path = _notebook(folder / "torn.ipynb")
    path.write_text(path.read_text()[:40])
    return path


def _list_notebook(folder):
    path = folder / "list.ipynb"
    path.write_text("[1, 2]")
    return path


def test_offline_cap_is_the_documented_one():
    assert (
        _base.OFFLINE_BYTES == 256 * 1024
        and "256 KiB" in (_base.__doc__ or "") + __import__("phi3lab.views.widgets.export", fromlist=["x"]).__doc__
    )


def test_anywidgets_local_front_end_is_where_the_readme_says_vscode_looks():
    """The README's VS Code row: anywidget ships its front end in the environment's share/jupyter/nbextensions,
    registered with ``window.requirejs?.config`` (the form recent VS Code Jupyter extensions recognise)."""
    import sys
    from pathlib import Path

    folder = Path(sys.prefix) / "share" / "jupyter" / "nbextensions" / "anywidget"
    if not folder.is_dir():
        pytest.skip(f"anywidget's nbextension is not installed at {folder}")
    entry = (folder / "extension.js").read_text()
    assert "window.requirejs?.config(" in entry and '"nbextensions/anywidget/index"' in entry
    assert (folder / "index.js").is_file()
    assert (Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "anywidget").is_dir()  # JupyterLab, Notebook 7


def test_a_noise_level_attribution_on_the_picture_is_no_signal_and_not_the_opening_token(vcache):
    """PatchExplorer's attribution source once drew a 2.0e-6 maximum as saturated heat and opened on '▁The'."""
    span = vcache.inputs.images[0]

    class Fake:
        target_ids = list(vcache.answer_ids)
        target_tokens = [f"t{i}" for i in range(len(target_ids))]

        def image_map(self, image, token=None):
            heat = np.full((span.height, span.width), 2.0e-6 if token != 1 else 0.0)
            if token == 1:
                heat[: span.height // 2] = 0.8
            return heat

    explorer = PatchExplorer(vcache, attribution=Fake())
    assert explorer.target == 1 and explorer.source == "attribution" and explorer.scale["signal"]
    explorer.show(target=0, source="attribution")
    assert not explorer.scale["signal"] and "no signal" in explorer.info
    assert set(_bytes(explorer.heat_crops)) == {0} and set(_bytes(explorer.heat_global)) == {0}
