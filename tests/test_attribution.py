"""phi3lab.attribution: units, captum parity, known answers on the embedded models, views and bad input."""

import base64
import copy
import html.parser
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from phi3lab import colours
from phi3lab.attribution import Attribution, TargetError, attribute, compare
from phi3lab.attribution.forward import Scorer
from phi3lab.attribution.units import build_units

ADA = [
    {"role": "user", "content": "Hi! My name is Ada."},
    {"role": "assistant", "content": "Nice to meet you, Ada!"},
    {"role": "user", "content": "What is my name?"},
]
TEMPLATE = ("special", "separator")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models run fastest on one thread, and steadiest on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def star():
    """A held-out picture whose one question the embedded vision model answers right: the star's colour."""
    from phi3lab.tiny import vision_data

    example = vision_data.shapes(random.Random(3), "test")
    assert example.question == "What colour is the star?" and example.answer == "The star is orange."
    return example


@pytest.fixture(scope="module")
def ada(tiny):
    return attribute(tiny, ADA, units="words", progress=False)


# --- units ---------------------------------------------------------------------------------------


def test_words_cover_the_turns_text_and_never_the_template(tiny):
    inputs = tiny.encode(ADA)
    units = build_units(inputs, ["words"])
    assert [u.label for u in units] == [
        "Hi!",
        "My",
        "name",
        "is",
        "Ada.",
        "Nice",
        "to",
        "meet",
        "you,",
        "Ada!",
        "What",
        "is",
        "my",
        "name?",
    ]
    assert [u.where for u in units[:5] + units[-1:]] == ["user 1"] * 5 + ["user 2"]
    covered = sorted(p for u in units for p in u.positions)
    content = [r.index for r in inputs.table.rows if r.segment not in TEMPLATE]
    assert covered == content


def test_messages_roles_tokens_and_template_units(tiny):
    inputs = tiny.encode([{"role": "system", "content": "Answer briefly."}] + ADA)
    assert [u.label for u in build_units(inputs, ["messages"])] == ["system 1", "user 1", "assistant 1", "user 2"]
    roles = build_units(inputs, ["roles"])
    assert [u.label for u in roles] == ["system", "user", "assistant"]
    assert len(roles[1].positions) == 5 + 4  # both user turns
    assert len(build_units(inputs, ["tokens"])) == sum(r.segment not in TEMPLATE for r in inputs.table.rows)
    template = [u for u in build_units(inputs, ["words"], include_template=True) if u.kind == "template"]
    assert template[0].label == "<|system|>" and len(template[0].positions) == 3  # with its ▁ and newline
    assert {inputs.table.rows[p].segment for u in template for p in u.positions} == set(TEMPLATE)


def test_image_regions_tile_the_picture_and_edit_both_views(vision, star):
    inputs = vision.encode("<|image_1|>\n" + star.question, [star.image])
    regions = build_units(inputs, ["image-regions"], vision=True)
    assert len(regions) == 9  # 4×4-cell blocks of the one 336-px crop (336 = 3 × 112)
    cover = np.zeros(star.image.size[::-1])
    for u in regions:
        x0, y0, x1, y1 = (int(round(b)) for b in u.box)
        cover[y0:y1, x0:x1] += 1
        assert [v[0] for v in u.views] == [1, 0]  # the crop view and the global view
        assert len(u.positions) == 16 + 16  # its 4×4 crop cells and the same cells of the global view
    assert (cover == 1).all()
    span = inputs.images[0]
    assert all(span.start <= p < span.end for u in regions for p in u.positions)
    crops = build_units(inputs, ["crops"], vision=True)
    assert [u.label for u in crops] == ["crop 1", "global view"] and len(crops[0].positions) == 144
    whole = build_units(inputs, ["images"], vision=True)
    assert len(whole) == 1 and len(whole[0].positions) == span.num_tokens


def test_regions_of_a_multi_crop_picture_find_their_crop_and_global_pixels(vision):
    from PIL import Image

    from phi3lab.prompts.patches import CROP

    picture = Image.new("RGB", (700, 300), "white")  # 4 crops: a 1×2 grid (canvas 672×336)
    inputs = vision.encode("<|image_1|>\nWhat is this?", [picture], num_crops=4)
    regions = build_units(inputs, ["image-regions"], region_size=6, vision=True)
    assert inputs.images[0].layout.grid == (1, 2) and len(regions) == 2 * 2 * 2
    width = inputs.images[0].layout.padded[0]
    for u in regions:
        (crop, y0, y1, x0, x1), (glob, gy0, gy1, gx0, gx1) = u.views
        left = (crop - 1) * CROP + x0  # canvas x of the crop-view rectangle
        assert glob == 0 and (y1 - y0, x1 - x0) == (168, 168)
        assert (gx0, gx1) == (round(left * CROP / width), round((left + 168) * CROP / width)) and (gy0, gy1) == (y0, y1)
        assert u.box[0] == pytest.approx(left * 700 / 672) and u.box[2] <= 700


def test_a_removed_region_is_white_in_both_views(vision, star):
    inputs = vision.encode("<|image_1|>\n" + star.question, [star.image])
    units = build_units(inputs, ["image-regions"], vision=True)
    white = [
        (1 - m) / s
        for m, s in zip(vision.processor.image_processor.image_mean, vision.processor.image_processor.image_std)
    ]
    scorer = Scorer(vision.model, inputs, units, torch.tensor([373]), 0, white)
    pixels = scorer._pixels(0, [4])  # the centre region
    changed = (pixels != inputs["pixel_values"][0]).any(1)  # [views, 336, 336]
    for view, y0, y1, x0, x1 in units[4].views:
        fill = torch.tensor(white).view(3, 1, 1).expand(3, y1 - y0, x1 - x0)
        assert torch.allclose(pixels[view, :, y0:y1, x0:x1], fill)
        changed[view, y0:y1, x0:x1] = False
    assert not changed.any()


# --- captum parity and the fast path -------------------------------------------------------------


def _plain_captum(lab, conversation, units, target):
    """captum's own LLMAttribution(FeatureAblation(model), tokenizer) on the same prompt, units and baseline."""
    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

    inputs = lab.encode(conversation)
    positions = [p for u in units for p in u.positions]
    inp = TextTokenInput("", lab.tokenizer, baselines=lab.tokenizer.unk_token_id)
    inp.inp_tensor = inputs.input_ids.cpu()
    inp.itp_mask = torch.zeros_like(inp.inp_tensor, dtype=torch.bool)
    inp.itp_mask[0, positions] = True
    inp.itp_tensor = inp.inp_tensor[inp.itp_mask][None]
    inp.n_itp_features, inp.values = len(positions), [str(p) for p in sorted(positions)]
    group = {p: i for i, u in enumerate(units) for p in u.positions}
    mask = torch.tensor([[group[p] for p in sorted(positions)]])
    first = [sorted(positions).index(u.positions[0]) for u in units]
    # use_cached_outputs=False: captum 0.9's cached decoding re-feeds the whole sequence each step on
    # transformers 5 (its cache_position never advances), which gives wrong log-probabilities
    result = LLMAttribution(FeatureAblation(lab.model), lab.tokenizer).attribute(
        inp, target=torch.tensor(target), feature_mask=mask, use_cached_outputs=False
    )
    return result.token_attr[:, first]


def test_feature_ablation_equals_plain_captum(tiny, ada):
    plain = _plain_captum(tiny, ADA, ada.units, ada.target_ids)
    assert ada.scores.shape == plain.shape == (4, 14)
    assert float((ada.scores - plain).abs().max()) <= 1e-4
    assert float(ada.scores.abs().max()) > 1  # not trivially equal


def test_batches_and_the_prefix_cache_change_nothing(tiny, ada):
    one = attribute(tiny, ADA, units="words", batch_size=1, progress=False)
    assert float((one.scores - ada.scores).abs().max()) <= 1e-4
    scorer = ada._scorer
    presence = torch.ones(3, len(ada.units))
    presence[0, 12], presence[1, [4, 9]], presence[2, :] = 0, 0, 0
    fast = scorer(presence)
    ids = scorer.ids.expand(3, -1).clone()
    for row in range(3):
        for u in (presence[row] == 0).nonzero()[:, 0].tolist():
            ids[row, list(ada.units[u].positions)] = tiny.tokenizer.unk_token_id
    with torch.no_grad():
        logits = tiny.model(input_ids=ids, use_cache=False).logits[:, -4:]
    slow = torch.log_softmax(logits, -1).gather(-1, scorer.target.expand(3, -1)[..., None])[..., 0]
    assert float((fast - slow).abs().max()) <= 1e-4
    assert scorer.evaluations >= 3


# --- known answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ablation", "shapley", "ig"])
def test_the_name_word_carries_the_name_token(tiny, method):
    """Said once, the name is what every method credits for the name token."""
    attr = attribute(tiny, "My name is Ada. What is my name?", units="words", method=method, progress=False)
    assert attr.target_text == "Your name is Ada." and attr.target_tokens[-1] == "▁Ada."
    unit, score = attr.top(1, token="Ada.")[0]
    assert (unit.label, unit.where) == ("Ada.", "user 1") and score > 1


def test_a_name_said_twice_hides_from_one_at_a_time_ablation(tiny, ada):
    """Said by the user and echoed by the assistant, removing either copy leaves the other: ablation gives
    both about nothing (noise), while Shapley, averaging over orders of removal, credits the user's copy."""
    shapley = attribute(tiny, ADA, units="words", method="shapley", n_samples=10, progress=False)
    user, echo = ada.labels.index("Ada."), ada.labels.index("Ada!")
    assert float(ada.row("Ada.")[[user, echo]].abs().max()) < 1e-3
    unit, score = shapley.top(1, token="Ada.")[0]
    assert (unit.label, unit.where) == ("Ada.", "user 1") and score > 0.5


def test_the_asked_about_shape_carries_the_picture(vision, star):
    attr = attribute(vision, "<|image_1|>\n" + star.question, [star.image], units="image-regions", progress=False)
    assert attr.target_text == star.answer
    heat = attr.image_map(0)
    assert heat.shape == (star.image.height, star.image.width)
    x0, y0, x1, y1 = star.boxes[0]
    assert heat[y0:y1, x0:x1].mean() > 2 * heat.mean() > 0
    assert attr.top(1)[0][0].box[0] <= x0 and attr.top(1)[0][0].box[2] >= x1  # the best region holds the star


def test_shapley_orders_add_up_to_the_full_minus_empty_difference(tiny):
    attr = attribute(tiny, ADA, units="messages", method="shapley", n_samples=3, progress=False)
    empty = attr._scorer(torch.zeros(1, len(attr.units)))[0]
    assert torch.allclose(attr.scores.sum(1), attr.log_prob - empty, atol=1e-4)


def test_ig_batches_bound_memory_not_the_numbers(tiny):
    small = attribute(tiny, ADA, units="messages", method="ig", n_steps=8, internal_batch_size=2, progress=False)
    whole = attribute(tiny, ADA, units="messages", method="ig", n_steps=8, internal_batch_size=None, progress=False)
    assert float((small.scores - whole.scores).abs().max()) <= 1e-3
    template = [r.index for r in tiny.encode(ADA).table.rows if r.segment in TEMPLATE]
    assert float(small.raw[:, template].abs().max()) == 0.0  # the template is the same in input and baseline
    assert small.delta.shape == (4,)
    assert all(p.grad is None for p in tiny.model.parameters())


def test_vision_ig_scores_words_and_regions_together(vision, star):
    attr = attribute(
        vision,
        "<|image_1|>\n" + star.question,
        [star.image],
        units=["words", "images"],
        method="ig",
        n_steps=4,
        progress=False,
    )
    assert [u.label for u in attr.units] == ["image 1", "What", "colour", "is", "the", "star?"]
    assert attr.scores.shape == (4, 6) and float(attr.scores[:, 0].abs().sum()) > 0


# --- faithfulness --------------------------------------------------------------------------------


def test_deletion_and_insertion_curves(tiny):
    attr = attribute(tiny, ADA, units="words", method="shapley", n_samples=4, progress=False)
    deletion, insertion, random_order = attr.deletion(), attr.insertion(), attr.deletion(order="random")
    full, empty = float(attr.log_prob.sum()), float(attr._scorer(torch.zeros(1, len(attr.units))).sum())
    assert deletion.log_probs[0] == pytest.approx(full, abs=1e-4) == insertion.log_probs[-1]
    assert deletion.log_probs[-1] == pytest.approx(empty, abs=1e-4) == insertion.log_probs[0]
    assert deletion.order[:2] == ("name?", "Ada.") and len(deletion.fractions) == len(attr.units) + 1
    assert deletion.area < random_order.area and insertion.area > attr.insertion(order="random").area
    assert deletion.area == pytest.approx(np.trapezoid(deletion.log_probs, deletion.fractions))
    assert [c.method for c in compare([attr])] == ["shapley", "random"]
    assert "deletion by shapley: area" in deletion.to_text()


# --- views ---------------------------------------------------------------------------------------


def test_text_html_and_captum_views(ada):
    text = ada.to_text()
    assert "ablation (FeatureAblation) over 14 units (words); target 'Your name is Ada.'" in text
    assert "per target token, its top unit:" in text and "'▁Ada.'        'Ada" in text and "<unk>" in text
    page = ada.to_html()
    assert "<script" not in page and "http" not in page and 'title="&#x27;Ada.&#x27; (user 1)' in page
    result = ada.captum
    assert result.token_attr.shape == (4, 14) and result.input_tokens == ada.labels
    assert repr(ada).startswith("Attribution(ablation, 4 target tokens × 14 units")


@pytest.fixture(scope="module")
def pictured(vision, star):
    return attribute(
        vision, "<|image_1|>\n" + star.question, [star.image], units=["words", "image-regions"], progress=False
    )


def test_picture_views(pictured, star):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phi3lab.views import plotting

    attr = pictured
    assert "data:image/png;base64," in attr.to_html()
    fig, axes = attr.plot()
    assert len(axes) == 2 and axes[1].images[1].get_array().shape[:2] == (star.image.height, star.image.width)
    for draw in (plotting.attribution_heatmap, plotting.attribution_text):
        f, ax = draw(attr)
        assert f is ax.figure
    f, ax = plotting.faithfulness_curves([attr.deletion(), attr.deletion(order="random")])
    assert len(ax.lines) == 2
    plt.close("all")


class _Spans(html.parser.HTMLParser):
    """Each ``<span title=…>`` of a page: its title, class and style; and each inline PNG."""

    def __init__(self, page):
        super().__init__()
        self.spans, self.pngs = {}, []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "title" in a:
            self.spans[a["title"]] = (a.get("class") or "", a["style"])
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            data = base64.b64decode(a["src"].split(",", 1)[1])
            self.pngs.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64))


def _with_scores(attr, words: float, regions: float) -> Attribution:
    """``attr`` with every word scoring ``words`` (the first one; the rest 0) and every region ``regions``."""
    other = copy.copy(attr)
    row = torch.tensor([regions if u.image is not None else 0.0 for u in attr.units])
    row[next(k for k, u in enumerate(attr.units) if u.image is None)] = words
    other.scores = row[None].repeat(len(attr.target_ids), 1) / len(attr.target_ids)
    return other


def _veiled(attr, alpha: float) -> np.ndarray:
    """The first picture as the HTML form sizes it, under the veil at opacity ``alpha``."""
    from phi3lab.attribution.result import PICTURE_SIDE

    picture = attr.inputs.image(0).image.convert("RGB")
    ratio = PICTURE_SIDE / max(picture.size)
    size = (round(picture.width * ratio), round(picture.height * ratio))
    shown = np.asarray(picture.resize(size, Image.LANCZOS), dtype=np.float64)
    veil = np.array([int(colours.VEIL[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    return shown * (1 - alpha) + veil * alpha


def _centres(attr, regions: int = 3) -> list[tuple[int, int]]:
    """Pixel (row, column) of the centres of the first few picture regions, in the HTML form's picture."""
    from phi3lab.attribution.result import PICTURE_SIDE

    ratio = PICTURE_SIDE / max(attr.inputs.image(0).image.size)
    boxes = [u.box for u in attr.units if u.image == 0][:regions]
    return [(int((y0 + y1) / 2 * ratio), int((x0 + x1) / 2 * ratio)) for x0, y0, x1, y1 in boxes]


def test_the_html_form_colours_every_unit_on_one_diverging_scale_with_its_legend(pictured):
    from phi3lab.colours import scale, tick

    values = pictured.row().tolist()
    s = scale(values, kind="score", label="", floor=pictured.noise_floor)
    page = pictured.to_html()
    spans = _Spans(page).spans
    coloured = 0
    for unit, value in zip(pictured.units, values):
        if unit.image is not None:
            continue
        colour = s.colour(value)
        if colour is None:
            cls, style = spans[f"{unit.name}: {value:+.2e} (no signal: under the noise floor {s.floor:.1e})"]
            assert cls == "phi3lab-nosignal" and "background" not in style and "dashed" in style
        else:
            cls, style = spans[f"{unit.name}: {value:+.3f}"]
            assert f"background:{colour};color:{colours.text_on(colour)}" in style
            coloured += 1
    assert coloured >= 2, "the star question has words with signal; without them this test proves nothing"
    assert '<div class="phi3lab-legend" data-kind="score" data-signal="true"' in page
    assert f"<span>{tick(-s.vmax, 'score')}</span><span>0</span><span>{tick(s.vmax, 'score')}</span>" in page
    assert "rgba(" not in page and pictured.noise_floor == colours.SCORE_FLOOR  # a float32 model's floor


def test_a_picture_region_is_veiled_against_the_views_one_scale_not_its_own(pictured):
    """Notebook 03's finding: image regions at +1.0 beside a word at +23.5 were drawn at full strength."""
    weak = _with_scores(pictured, words=23.5, regions=1.0)
    shown = _Spans(weak.to_html()).pngs[0]
    expected = _veiled(pictured, colours.VEIL_ALPHA * (1 - 1.0 / 23.5))
    for r, c in _centres(pictured):
        assert np.abs(shown[r, c] - expected[r, c]).max() <= 3, (shown[r, c], expected[r, c])
    strong = _with_scores(pictured, words=1.0, regions=1.0)  # now the regions are at the top: clear
    shown, clear = _Spans(strong.to_html()).pngs[0], _veiled(pictured, 0.0)
    for r, c in _centres(pictured):
        assert np.abs(shown[r, c] - clear[r, c]).max() <= 3, (shown[r, c], clear[r, c])
    assert "on the scale above (±23.5)" in weak.to_html()


def test_noise_level_scores_are_drawn_uncoloured_and_said_to_be_no_signal(pictured):
    """Notebook 03's finding: target '▁is' scoring ±2.3e-6 was drawn as full red and blue."""
    noise = copy.copy(pictured)
    signs = torch.tensor([(-1.0) ** k for k in range(len(pictured.units))])
    noise.scores = (2.3e-6 * signs)[None].repeat(len(pictured.target_ids), 1) / len(pictured.target_ids)
    page = noise.to_html()
    found = _Spans(page)
    names = [u.name for u in pictured.units if u.image is None]
    titles = [t for t in found.spans if any(t.startswith(f"{n}: ") for n in names)]
    assert len(titles) == len(names) and all("(no signal: under the noise floor" in t for t in titles)
    assert all(found.spans[t][0] == "phi3lab-nosignal" and "background" not in found.spans[t][1] for t in titles)
    assert 'data-signal="false"' in page and "every value is under the noise floor" in page
    assert "no signal anywhere: the picture is veiled all over" in page
    veiled = _veiled(pictured, colours.VEIL_ALPHA)
    for r, c in _centres(pictured):
        assert np.abs(found.pngs[0][r, c] - veiled[r, c]).max() <= 3


def test_score_colour_is_the_diverging_map_and_transparent_under_the_floor():
    from phi3lab.attribution import score_colour

    assert score_colour(3.0, 3.0) == colours.DIVERGING[-1] and score_colour(-3.0, 3.0) == colours.DIVERGING[0]
    assert score_colour(1e-7, 3.0) == "transparent" and score_colour(0.5, 3.0, floor=1.0) == "transparent"


def test_progress_bar_when_asked_and_never_when_not(tiny, capsys):
    attribute(tiny, ADA, units="messages", progress=True)
    assert "FeatureAblation:   0%|          | 0/4" in capsys.readouterr().err  # 3 turns + the unperturbed run
    attribute(tiny, ADA, units="messages", progress=False)
    attribute(tiny, ADA, units="messages")  # default: only runs that last over a second
    assert capsys.readouterr().err == ""


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(units="sentences"), ValueError, "unknown units ['sentences']"),
        (dict(units=["words", "tokens"]), ValueError, "at most one text kind"),
        (dict(method="lime"), ValueError, "unknown method 'lime'"),
        (dict(units="image-regions"), ValueError, "needs pictures, but this is a text model"),
        (dict(target=""), TargetError, "target is empty"),
        (dict(target="Your name<|end|> is Ada."), TargetError, "not reachable"),
        (dict(target="Ada " * 5000), TargetError, "exceed the model's context"),
        (dict(target=[5, 99999]), TargetError, "[99999] are not"),
        (dict(target=3.5), TypeError, "target must be"),
        (dict(batch_size=0), ValueError, "batch_size must be an int ≥ 1"),
        (dict(baseline="two words"), ValueError, "a text baseline must be one token"),
    ],
)
def test_bad_input_is_refused_clearly(tiny, kwargs, error, words):
    with pytest.raises(error) as info:
        attribute(tiny, ADA, progress=False, **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "conversation, words",
    [("", "conversation is empty"), ([], "conversation is empty"), ("   ", "conversation is empty")],
)
def test_empty_conversations_are_refused(tiny, conversation, words):
    with pytest.raises(ValueError, match=words):
        attribute(tiny, conversation)


def test_image_units_need_a_picture_and_a_dividing_region(vision, star):
    with pytest.raises(ValueError, match="this prompt has none"):
        attribute(vision, "What colour is the star?", units="crops")
    with pytest.raises(ValueError, match="region_size=5 must divide"):
        attribute(vision, "<|image_1|>\n" + star.question, [star.image], units="image-regions", region_size=5)
    with pytest.raises(ValueError, match="image_baseline='grey'"):
        attribute(vision, "<|image_1|>\n" + star.question, [star.image], units="images", image_baseline="grey")
    text_only = attribute(vision, "<|image_1|>\n" + star.question, [star.image], units="messages", progress=False)
    assert isinstance(text_only, Attribution)
    with pytest.raises(ValueError, match="no units on image 0"):
        text_only.image_map(0)


def test_compare_refuses_attributions_of_different_prompts_and_bad_tops(tiny):
    from phi3lab.attribution import attribute, compare

    one = attribute(tiny, "My name is Ada. What is my name?", units="words")
    other = attribute(tiny, "What is 2 plus 3?", units="words")
    with pytest.raises(ValueError, match="not of the same prompt, units and target"):
        compare([one, other])
    with pytest.raises(TypeError, match="list of attributions"):
        compare(["a"])
    with pytest.raises(ValueError, match="top must be at least 1"):
        one.to_text(top=-1)
    with pytest.raises(ValueError, match="n must be at least 1"):
        one.top(0)


def test_the_noise_floor_follows_the_models_dtype():
    import types

    from phi3lab.attribution import _noise_floor

    assert _noise_floor(types.SimpleNamespace(dtype=torch.float32)) == colours.SCORE_FLOOR
    assert _noise_floor(types.SimpleNamespace(dtype=torch.bfloat16)) == colours.noise_floor("bfloat16") == 1.0
    assert _noise_floor(types.SimpleNamespace(dtype=torch.int8)) == colours.SCORE_FLOOR  # unknown: float32's
