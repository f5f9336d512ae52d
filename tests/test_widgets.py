"""phi3lab.views.widgets without a browser or kernel: payloads, sizes, interactions, bad input, static forms."""

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from phi3lab.views.widgets import AttentionExplorer, AttributionView, ChatWidget, PatchExplorer
from phi3lab.views.widgets._base import MessageLog, module_source, state_bytes, stylesheet
from phi3lab.views.widgets.attention import strip_items

QUESTION = "<|image_1|>\nWhat colour is the triangle?"


@pytest.fixture(scope="module")
def vcache(vision, picture):
    _, cache = vision.generate_with_cache(QUESTION, [picture], max_new_tokens=6)
    return cache


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
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8)


# --- front end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["attention", "patches", "chat", "attribution"])
def test_each_module_is_self_contained_and_fetches_nothing(name):
    source = module_source(name)
    assert "export default" in source and "function h(" in source  # common.js inlined
    assert not re.search(r"^\s*import\s", source, re.M), "a leftover import would need a server to resolve"
    assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", source + stylesheet())


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
    heat = _bytes(explorer.heat) / 255 * explorer.vmax
    expected = explorer.view.chip_sums(vcache.mean_attention(rows=[row]).numpy())
    assert np.allclose(heat, expected, atol=explorer.vmax / 255)
    explorer.show(row=row, layer=1, head=2)
    expected = explorer.view.chip_sums(vcache.attention(1)[0, 2, row].numpy())
    assert np.allclose(_bytes(explorer.heat) / 255 * explorer.vmax, expected, atol=explorer.vmax / 255)


def test_an_interaction_sends_only_the_new_row(vcache):
    explorer = AttentionExplorer(vcache)
    log = MessageLog(explorer)
    before = explorer.heat
    explorer.set_state({"row": vcache.answer_rows[-1]})  # as a hover in the browser arrives
    sent = log.updates()
    assert sent["heat"] != before and set(sent) <= {
        "row",
        "heat",
        "vmax",
        "thumbs",
        "thumb_bins",
        "thumb_peaks",
        "info",
        "error",
    }
    assert [m["method"] for m in log.messages] == ["echo_update", "update"]  # one batched update
    assert log.bytes() < 4096 < state_bytes(explorer)


def test_max_and_rollout_differ_from_mean_and_rollout_needs_every_row(last_rows, tiny):
    explorer = AttentionExplorer(last_rows)
    mean = explorer.heat
    explorer.agg = "max"
    assert explorer.heat != mean and explorer.error == ""
    explorer.agg = "rollout"  # this cache has the answer rows only: refused, with the fix, back to mean
    assert explorer.agg == "mean" and "rollout=True" in explorer.error and explorer.heat == mean
    _, full = tiny.generate_with_cache("What is 2 plus 3?", max_new_tokens=3, rollout=True)
    rolled = AttentionExplorer(full)
    rolled.agg = "rollout"
    expected = rolled.view.chip_sums(full.rollout([rolled.row]).numpy()[0])
    assert rolled.error == "" and np.allclose(_bytes(rolled.heat) / 255 * rolled.vmax, expected, atol=rolled.vmax / 255)


def test_thumbnails_cover_every_layer_and_head(vcache):
    explorer = AttentionExplorer(vcache)
    cells = len(explorer.layers) * len(explorer.heads)
    assert len(_bytes(explorer.thumbs)) == cells * explorer.thumb_bins and len(explorer.thumb_peaks) == cells
    assert explorer.thumb_bins == len(explorer.items)  # few chips: not pooled


def test_explorer_refuses_what_it_cannot_show(vcache, last_rows):
    with pytest.raises(TypeError, match="run_with_cache"):
        AttentionExplorer("not a cache")
    with pytest.raises(ValueError, match=r"layers \[7\] were not captured"):
        AttentionExplorer(vcache, layers=[7])
    explorer = AttentionExplorer(last_rows)
    explorer.row = 99  # no such row (positions='last' kept 5)
    assert "no captured attention" in explorer.error and explorer.heat  # the view stays as it was


def test_explorer_static_forms(tcache):
    explorer = AttentionExplorer(tcache)
    text = explorer.to_text()
    assert text.startswith("row at position") and "most attended" in text
    page = explorer._repr_html_()
    assert "<script" not in page and page.count("phi3lab-chip") == len(explorer.items)
    data, _ = explorer._repr_mimebundle_()
    assert {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"} <= set(data)


# --- patch explorer -------------------------------------------------------------------------------


def test_patch_heat_equals_the_caches_image_heat(vcache):
    explorer = PatchExplorer(vcache)
    for target in (0, 3):
        explorer.show(target=target)
        expected = vcache.image_heat(0, rows=[vcache.answer_rows[target]])
        crops = _bytes(explorer.heat_crops).reshape(expected.crops.shape) / 255 * explorer.vmax_crops
        glob = _bytes(explorer.heat_global).reshape(12, 12) / 255 * explorer.vmax_global
        assert np.allclose(crops, expected.crops, atol=explorer.vmax_crops / 255)
        assert np.allclose(glob, expected.global_view, atol=explorer.vmax_global / 255)


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
    explorer.target = 2
    assert log.updates()["heat_crops"] != before and log.bytes() < 8192
    assert state_bytes(explorer) < 512 * 1024


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


def test_patch_static_forms_show_both_views(vcache):
    explorer = PatchExplorer(vcache)
    page = explorer.to_html()
    assert page.count("<img") == 2 and "global view" in page and "<script" not in page
    assert "top crops cells" in explorer.to_text()


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
    assert (
        box.messages[-1]["stats"]
        == reference.stats().split(" · first")[0]
        + box.messages[-1]["stats"][len(reference.stats().split(" · first")[0]) :]
    )
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


def test_chat_uploaded_picture_becomes_an_image_tag(vision, picture):
    box = ChatWidget(vision, max_new_tokens=8)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    box._dispatch(
        box,
        {
            "type": "image",
            "name": "shapes.png",
            "data": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
        },
        [],
    )
    assert [p["name"] for p in box.pending] == ["shapes.png"]
    box.ask("What colour is the triangle?")
    assert box.history[0]["content"] == "<|image_1|>\nWhat colour is the triangle?" and box.pending == []
    assert len(box.session.images) == 1 and box.messages[0]["images"]
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


# --- attribution view -----------------------------------------------------------------------------


class _Minimal:
    """The smallest object AttributionView reads: labels, target tokens, scores."""

    def __init__(self):
        self.units = [type("U", (), {"label": w, "image": None})() for w in ("What", "is", "2", "plus", "3")]
        self.target_tokens = ["▁5", "<|end|>"]
        self.scores = torch.tensor([[0.1, -0.2, 1.0, 0.3, 0.9], [0.0, 0.0, 0.1, 0.0, -0.1]])


def test_attribution_view_reads_the_minimal_protocol():
    view = AttributionView(_Minimal())
    scores = _bytes(view.scores).astype(int) - 127
    assert scores.tolist() == [12, -23, 127, 35, 92]  # summed over targets, scaled to ±127
    log = MessageLog(view)
    view.token = 1
    assert log.updates()["scores"] != view.view.payload(-1)["scores"] and log.bytes() < 1024
    assert "'▁5'" not in view.info and "<|end|>" in view.info
    view.token = 5
    assert "token 5 does not exist" in view.error and view.token == -1
    with pytest.raises(TypeError, match="has no 'units'"):
        AttributionView(object())


def test_attribution_view_of_a_real_attribution(vision, picture, vcache):
    attribution = pytest.importorskip("phi3lab.attribution")
    attr = attribution.attribute(vision, QUESTION, [picture], units=["words", "image-regions"])
    view = AttributionView(attr)
    assert view.targets == [t for t in attr.target_tokens] and len(view.maps) == 1
    assert view.to_html() == attr.to_html()
    view.token = 0
    assert view.error == "" and view.info.startswith(repr(attr.target_tokens[0]))
    explorer = PatchExplorer(vcache, attribution=attr)
    explorer.show(target=len(attr.target_tokens) - 1, source="attribution")
    assert explorer.error == "" and explorer.vmax_crops > 0
