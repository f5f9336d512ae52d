"""Vision interpretability on the embedded vision model: attention sinks, the patch lens, causal image
maps beside attention and attribution, and several pictures in one prompt."""

import random

import numpy as np
import pytest
import torch
from sink_support import planted

import phi3lab
from phi3lab.inspect.causal import causal_map, compare_maps, spearman
from phi3lab.inspect.patch_lens import WordReads, patch_lens, word_ids, word_reads
from phi3lab.inspect.sinks import DEFAULT_QUESTIONS, find_sinks

QUESTIONS = ["What colour is the triangle?", "What is shown in this image?", "What colour is the square?"]


# --- attention sinks --------------------------------------------------------------------------------------


def _planted(vision, picture, index: int, questions=QUESTIONS, massive: float = 0.0):
    """Caches of ``questions`` with image token ``index`` made a sink (see ``sink_support``)."""
    return planted(vision, picture, [index], questions, massive=massive)


def test_a_planted_sink_is_found_and_masked(vision, picture):
    index = 60  # a crop cell
    caches = _planted(vision, picture, index)
    sinks = find_sinks(caches)
    assert index in sinks.indices and sinks.evidence == "3 questions × 4 layers"
    assert sinks.ratio[index] >= 5 and sinks.consistency[index] >= 0.75
    assert "sink" in sinks.to_text() and sinks.describe(index).startswith("crop 1 cell")
    masked, shown = caches[0].image_heat(0, sinks=sinks), caches[0].image_heat(0, sinks="show", found=sinks)
    assert index in caches[0].sinks(0).candidates  # one question of the three: a candidate, not masked by default
    token = sinks.tokens[index]
    assert masked.crops[token.row, token.col] == 0 and masked.masked and masked.masked_mass > 0
    assert shown.crops[token.row, token.col] > 0 and not shown.masked and index in shown.sinks
    assert ("crops", token.row, token.col) in masked.sink_cells()
    assert "masked" in masked.to_text()


def test_sinks_found_across_questions_can_be_shown_or_masked(vision, picture):
    index = 60
    caches = _planted(vision, picture, index)
    across = find_sinks(caches)
    _, plain = vision.generate_with_cache(f"<|image_1|>\n{QUESTIONS[1]}", [picture], max_new_tokens=4)
    shown, masked = plain.image_heat(0, sinks="show", found=across), plain.image_heat(0, found=across)
    token = across.tokens[index]
    assert shown.sinks == masked.sinks == tuple(sorted(across.indices)) and not shown.masked and masked.masked
    assert shown.crops[token.row, token.col] > 0 and masked.crops[token.row, token.col] == 0
    assert abs(shown.total - masked.total - masked.masked_mass) < 1e-6
    with pytest.raises(ValueError, match="pass the Sinks once"):
        plain.image_heat(0, sinks=across, found=across)
    with pytest.raises(ValueError, match="found must be a Sinks"):
        plain.image_heat(0, found=[60])
    two = [picture, phi3lab.sample_image("chart.png")]
    _, both = vision.generate_with_cache("<|image_1|>\n<|image_2|>\nWhat is shown?", two, max_new_tokens=2)
    with pytest.raises(ValueError, match="belong to picture 1 .* not picture 2"):
        both.image_heat(1, found=across)


def _cells_over(tokens, box) -> list[int]:
    """Indices of the cells (crop or global view) whose pixels overlap ``box``."""
    x0, y0, x1, y1 = box
    return [
        t.index
        for t in tokens
        if t.image_box is not None
        and t.image_box[0] < x1
        and x0 < t.image_box[2]
        and t.image_box[1] < y1
        and y0 < t.image_box[3]
    ]


def test_one_question_masks_nothing_on_the_triangle_it_asks_about(vision, picture):
    """Known answer (issue 24): asked about the triangle, the answer looks hard at cells over the triangle in
    every layer; from this one question they are candidates, and the default heat map masks nothing."""
    rgb = np.asarray(picture.convert("RGB")).astype(int)
    ys, xs = np.nonzero((rgb[..., 2] > 150) & (rgb[..., 1] < 100))  # the purple triangle, from the pixels
    triangle = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    _, cache = vision.generate_with_cache(f"<|image_1|>\n{QUESTIONS[0]}", [picture], max_new_tokens=8)
    own = cache.sinks(0)
    over = set(_cells_over(own.tokens, triangle))
    assert own.evidence == "1 question × 4 layers" and own.questions == 1 and own.indices == ()
    assert 1 < own.activation.max() < own.min_activation == 100  # the tiny model has no massive activations
    assert over & set(own.candidates), "the answer looks hard at the triangle; without that this proves nothing"
    heat, raw = cache.image_heat(0), cache.image_heat(0, sinks="show")
    assert not heat.masked and heat.masked_mass == 0 and heat.sinks == () and heat.candidates == own.candidates
    assert (heat.crops == raw.crops).all() and (heat.global_view == raw.global_view).all()
    assert heat.global_view.max() > 0 and "no sink masked for" in heat.to_text()
    candidate = own.to_text()
    assert "0 sink tokens of 313" in candidate and "candidate (one question: ask more with find_sinks(lab" in candidate
    assert "activation ≥ 100× the prompt's median (one question)" in candidate

    # across questions the triangle's cells no longer pass: what one question looks at is not a sink
    across = find_sinks(vision, picture=picture, questions=[QUESTIONS[0], *DEFAULT_QUESTIONS])
    assert across.evidence == "5 questions × 4 layers" and across.candidates == ()
    assert not over & set(across.indices)
    assert all(across.consistency[i] >= 0.75 and across.ratio[i] >= 5 for i in across.indices)
    masked = cache.image_heat(0, found=across)
    assert masked.sinks == tuple(sorted(across.indices)) and masked.masked == bool(across.indices)
    assert all(masked.global_view[r, c] == 0 < raw.global_view[r, c] for _, r, c in masked.sink_cells())


def test_a_massive_activation_makes_one_question_enough(vision, picture):
    index = 60
    quiet, loud = (_planted(vision, picture, index, QUESTIONS[:1], m)[0] for m in (0.0, 1000.0))
    assert index in quiet.sinks(0).candidates and index not in quiet.sinks(0).indices
    sinks = loud.sinks(0)
    assert index in sinks.indices and index not in sinks.candidates and sinks.activation[index] >= 100
    assert sinks.dims[index] == 0 and sinks.evidence == "1 question × 4 layers"
    assert index in loud.sinks(0, min_activation=5000).candidates  # the threshold decides
    heat = loud.image_heat(0)
    token = sinks.tokens[index]
    assert heat.masked and heat.crops[token.row, token.col] == 0 and heat.masked_mass > 0


def test_the_same_question_twice_is_one_question(vision, picture):
    _, cache = vision.generate_with_cache(f"<|image_1|>\n{QUESTIONS[0]}", [picture], max_new_tokens=4)
    twice = find_sinks([cache, cache])
    assert twice.questions == 1 and twice.evidence == "1 question × 4 layers (2 caches)"
    assert twice.indices == () and twice.candidates == find_sinks([cache]).candidates


def test_find_sinks_asks_a_lab_what_the_caches_would_hold(vision, picture):
    caches = [vision.generate_with_cache(f"<|image_1|>\n{q}", [picture], max_new_tokens=4)[1] for q in QUESTIONS]
    by_hand, asked = find_sinks(caches), find_sinks(vision, picture=picture, questions=QUESTIONS, max_new_tokens=4)
    assert asked.evidence == by_hand.evidence == "3 questions × 4 layers"
    assert np.allclose(asked.ratio, by_hand.ratio, atol=1e-5) and asked.indices == by_hand.indices
    # the same activations up to the median they are divided by (the caches' rows include their answers)
    assert np.allclose(asked.activation, by_hand.activation, rtol=0.02) and (asked.dims == by_hand.dims).mean() > 0.99
    # image tokens come before the question: their activations are the same whatever is asked
    span = caches[0].inputs.image(0)
    first, second = (c["resid_post", 3][0, span.start : span.end] for c in caches[:2])
    assert torch.allclose(first, second, rtol=1e-5, atol=1e-4)  # float rounding only: values reach ~200
    assert find_sinks(vision, picture=picture, max_new_tokens=2).evidence == "4 questions × 4 layers"


def test_without_a_planted_sink_that_token_is_ordinary(vision, picture):
    caches = [vision.generate_with_cache(f"<|image_1|>\n{q}", [picture], max_new_tokens=4)[1] for q in QUESTIONS]
    sinks = find_sinks(caches)
    assert 60 not in sinks.indices
    assert np.isclose(sinks.ratio.mean(), 1.0)  # ratios are multiples of a uniform share
    assert (sinks.activation > 0).all() and (sinks.dims >= 0).all()  # resid_post was kept: activation evidence


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(min_ratio=0.5), ValueError, "min_ratio must be at least 1"),
        (dict(min_consistency=2), ValueError, "min_consistency must be at most 1"),
        (dict(image=1), IndexError, "has 1 image"),
        (dict(min_activation=0), ValueError, "min_activation must be greater than 0"),
        (dict(picture="shapes.png"), ValueError, "picture= and questions= go with a Lab"),
    ],
)
def test_bad_sink_requests(vision, picture, kwargs, error, words):
    _, cache = vision.generate_with_cache(f"<|image_1|>\n{QUESTIONS[0]}", [picture], max_new_tokens=2)
    with pytest.raises(error, match=words):
        find_sinks([cache], **kwargs)
    with pytest.raises(ValueError, match="sinks must be 'mask', 'show'"):
        cache.image_heat(0, sinks="hide")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(), ValueError, r"asks questions about a picture: pass it, find_sinks\(lab, picture=picture\)"),
        (dict(questions=[]), ValueError, "questions is empty"),
        (dict(questions="Describe it."), TypeError, "wrap it in a list"),
        (dict(image=1), ValueError, "asks about one picture, image 0; got image=1: drop image="),
    ],
)
def test_bad_requests_of_a_lab(vision, picture, kwargs, error, words):
    if "image" in kwargs or "questions" in kwargs:
        kwargs = {"picture": picture, **kwargs}
    with pytest.raises(error, match=words):
        find_sinks(vision, **kwargs)


# --- the patch lens ---------------------------------------------------------------------------------------


def test_the_patch_lens_is_the_logit_lens_of_each_image_token(vision, picture):
    _, cache = vision.run_with_cache(f"<|image_1|>\n{QUESTIONS[1]}", [picture])
    lens = patch_lens(cache)
    span = cache.inputs.image(0)
    model = vision.model
    with torch.no_grad():  # by hand, for two tokens of layer 2
        for i in (0, span.num_tokens - 1):
            hidden = cache["resid_post", 2][0, span.start + i]
            logits = model.lm_head(model.model.norm(hidden))
            assert int(logits.argmax()) == int(lens.top_ids[2, i])
    grid = lens.grid(2, "global")
    assert grid.shape == (12, 12) and all(grid.reshape(-1))
    word = int(lens.top_ids[-1, 0])
    assert 0 < lens.reads(word) <= 1
    assert lens.to_text(-1).startswith(f"patch lens, image 1, layer {lens.layers[-1]}, global")
    with pytest.raises(IndexError, match="was not read"):
        lens.grid(9)
    _, short = vision.run_with_cache(f"<|image_1|>\n{QUESTIONS[1]}", [picture], positions="last")
    with pytest.raises(ValueError, match="positions='all'"):
        patch_lens(short)


def test_word_ids_are_the_pieces_that_spell_the_word(reader):
    tokenizer = reader.tokenizer
    pieces = set(tokenizer.convert_ids_to_tokens(list(word_ids(tokenizer, "Apple"))))
    assert {"▁apple", "▁apple."} <= pieces and all(p.replace("▁", "").strip(".,?").lower() == "apple" for p in pieces)
    assert word_ids(tokenizer, "zqxv") == ()
    with pytest.raises(ValueError, match="must be one word"):
        word_ids(tokenizer, "two words")


def test_the_cells_covering_a_box_are_those_mostly_inside_it(vision, picture):
    _, cache = vision.run_with_cache(f"<|image_1|>\n{QUESTIONS[1]}", [picture], sites=["resid_post"])
    lens = patch_lens(cache)
    cell = next(t for t in lens.tokens if t.kind == "crop" and t.row == 4 and t.col == 5)
    x0, y0, x1, y1 = cell.image_box
    assert cell.index in lens.cells(cell.image_box) and cell.index not in lens.cells((x1, y0, x1 + 5, y1))
    half = lens.cells((x0, y0, (x0 + x1) / 2, y1), min_overlap=0.5)
    assert cell.index in half and cell.index not in lens.cells((x0, y0, (x0 + x1) / 2 - 1, y1), min_overlap=0.5)
    covered = lens.cells((0, 0, picture.width, picture.height))
    assert {lens.tokens[i].kind for i in covered} == {"crop", "global"}


def test_cells_covering_a_written_word_read_it_more_than_a_blank_picture_and_the_rest(reader):
    """A known answer of the reader: in its last layers, cells over a written word read that word (top-1 of the
    patch lens) more often than the same cells of a blank picture and than the picture's cells away from it."""
    from phi3lab.tiny import evaluate

    reads = word_reads(reader, evaluate.word_pictures(8))
    k = reads.layers.index(reads.best_layer)
    word, blank, other = reads.share("word")[k], reads.share("blank")[k], reads.share("other")[k]
    assert word > 0.02 and word > 2 * blank and word > 2 * other, reads.to_text()
    assert reads.words_read()[k] > 0 and reads.most_read(1)[0].hits[k] > 0
    assert reads.pictures == 8 and reads.cells == sum(w.cells for w in reads.words)
    text = reads.to_text()
    assert text.startswith("patch lens on 8 picture(s)") and f"most at layer {reads.best_layer}" in text
    assert WordReads.from_dict(reads.to_dict()) == reads


def test_the_stored_report_is_for_the_shipped_reader(reader, tmp_path):
    import json

    from phi3lab.paths import data_dir
    from phi3lab.tiny import evaluate

    report = evaluate.stored_patch_lens_report(reader)  # raises if the reader was retrained since
    assert report.pictures == evaluate.READING_N and report.weights == evaluate.weights_digest(reader)
    assert report.share("word").max() > 0  # the figure notebook 05 quotes
    data = json.loads((data_dir() / evaluate.PATCH_LENS_REPORT).read_text())
    stale = tmp_path / "report.json"
    stale.write_text(json.dumps({**data, "weights": "0" * 16}))
    with pytest.raises(evaluate.StaleReportError, match="tiny.evaluate reader --patch-lens"):
        evaluate.stored_patch_lens_report(reader, stale)
    with pytest.raises(FileNotFoundError, match="write it with"):
        evaluate.stored_patch_lens_report(reader, tmp_path / "missing.json")


@pytest.mark.parametrize(
    "case, words",
    [
        ("text model", "a text model"),
        ("no pictures", "pictures is empty"),
        ("not a pair", "must be a (picture, [(word, box), ...]) pair"),
        ("overlap", "min_overlap must be at most 1"),
    ],
)
def test_bad_word_reads(tiny, reader, picture, case, words):
    calls = {
        "text model": lambda: word_reads(tiny, [(picture, [("apple", (0, 0, 10, 10))])]),
        "no pictures": lambda: word_reads(reader, []),
        "not a pair": lambda: word_reads(reader, [picture]),
        "overlap": lambda: word_reads(reader, [(picture, [])], min_overlap=2),
    }
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        calls[case]()


def test_the_lens_and_word_figures_draw(reader):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phi3lab.tiny import evaluate
    from phi3lab.views import plotting

    written, words = evaluate.word_pictures(1)[0]
    _, cache = reader.run_with_cache("<|image_1|>\nWhat does the picture say?", [written], sites=["resid_post"])
    lens = patch_lens(cache)
    fig, ax = plotting.patch_lens_image(written, lens, -1, "global", words=words)
    drawn = [t.get_text() for t in ax.texts]
    cells = [t for t in lens.tokens if t.kind == "global" and t.image_box is not None]
    assert len(drawn) == len(cells) and fig.axes[-1].get_ylabel().startswith("probability of the cell's top token")
    assert "where a word is written" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    reads = word_reads(reader, [(written, words)])
    fig, ax = plotting.word_reads(reads)
    assert len(ax.lines) == 4 and list(ax.lines[0].get_xdata()) == list(reads.layers)
    plt.close(fig)


# --- causal image maps ------------------------------------------------------------------------------------


def _answered_right(vision, seed, count):
    """Held-out pictures of the training family that the model answers right."""
    from phi3lab.tiny import vision_data

    rng = random.Random(seed)
    found = []
    for _ in range(60):
        example = vision_data.shapes(rng, "test")
        prompt = f"<|image_1|>\n{example.question}"
        if vision.chat(prompt, [example.image], stream=False, max_new_tokens=16).text == example.answer:
            found.append((example, prompt))
            if len(found) == count:
                return found
    pytest.skip(f"only {len(found)} held-out shapes pictures answered right in 60 draws")


@pytest.mark.slow
def test_the_asked_about_shape_is_what_the_answer_uses(vision):
    """A known answer: for pictures the model answers right, removing the region that holds the asked-about
    shape lowers the answer's probability, and it is the region the answer needs most in most of them."""
    firsts = 0
    for example, prompt in _answered_right(vision, 39, 4):
        cm = causal_map(vision, prompt, [example.image], region_size=4)
        x0, y0, x1, y1 = example.boxes[0]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        holding = [
            i
            for i, r in enumerate(cm.regions)
            if r.image_box[0] <= cx <= r.image_box[2] and r.image_box[1] <= cy <= r.image_box[3]
        ]
        assert holding and cm.drops[holding[0]] > 0, cm.to_text()
        firsts += int(np.argmax(cm.drops) == holding[0])
        assert cm.answer == example.answer
    assert firsts >= 3


def _whole_forward_drops(vision, prompt, picture, cm, regions):
    """The drops of ``regions`` from one plain forward of the whole prompt each (no batching, no reuse)."""
    from phi3lab.inspect.kernel import embed_inputs

    inputs = vision.encode(prompt, [picture])
    span = inputs.image(0)
    target = list(cm.answer_ids)
    ids = torch.cat([inputs.input_ids, torch.tensor([target[:-1]])], dim=1)
    drops = []
    with torch.no_grad():
        embeds = embed_inputs(vision.model, ids, inputs["pixel_values"], inputs["image_sizes"])
        mean = embeds[0, span.start : span.end].mean(0)
        for k in regions:
            edited = embeds.clone()
            edited[0, [span.start + t for t in cm.regions[k].tokens]] = mean
            logits = vision.model(inputs_embeds=edited).logits[0, -len(target) :]
            score = torch.log_softmax(logits, -1)[torch.arange(len(target)), torch.tensor(target)].sum()
            drops.append(float(cm.base - score))
    return np.array(drops)


def test_batched_regions_equal_single_forwards(vision, picture):
    """The batched map, each batch started at its first removed token, equals one plain forward per region."""
    prompt = f"<|image_1|>\n{QUESTIONS[0]}"
    cm = causal_map(vision, prompt, [picture], batch_size=4)
    chosen = [0, 5, len(cm.regions) - 1]
    assert np.abs(_whole_forward_drops(vision, prompt, picture, cm, chosen) - cm.drops[chosen]).max() < 1e-4


def test_each_forward_starts_at_its_first_removed_token(vision, picture, monkeypatch):
    """Nothing before a removed region is recomputed (the text before the picture included), and the drops
    are those of whole forwards."""
    from phi3lab.inspect import causal

    prompt = "Read this note first. " * 20 + f"<|image_1|>\n{QUESTIONS[0]}"
    span = vision.encode(prompt, [picture]).image(0)
    firsts, forward = [], causal.forward_from
    monkeypatch.setattr(causal, "forward_from", lambda *a: firsts.append(a[3]) or forward(*a))
    cm = causal_map(vision, prompt, [picture], region_size=6, batch_size=3, max_new_tokens=3)
    starts = [span.start + min(r.tokens) for r in cm.regions]
    assert firsts == [min(starts[i : i + 3]) for i in range(0, len(starts), 3)]
    assert 0 < span.start <= firsts[0] < firsts[-1]
    chosen = [1, len(cm.regions) - 1]
    assert np.abs(_whole_forward_drops(vision, prompt, picture, cm, chosen) - cm.drops[chosen]).max() < 1e-4


@pytest.mark.parametrize("baseline", ["blur", "other"])
@pytest.mark.slow
def test_other_baselines(vision, picture, baseline):
    other = phi3lab.sample_image("chart.png")
    cm = causal_map(vision, f"<|image_1|>\n{QUESTIONS[0]}", [picture], baseline=baseline, other=other)
    assert cm.baseline == baseline and len(cm.drops) == len(cm.regions) and np.isfinite(cm.drops).all()


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(baseline="noise"), ValueError, "baseline='noise' is not a choice"),
        (dict(baseline="other"), ValueError, "needs other="),
        (dict(region_size=5), ValueError, "must divide a crop's 12 cells"),
        (dict(batch_size=0), ValueError, "batch_size must be at least 1"),
        (dict(image=2), IndexError, "has 1 image"),
    ],
)
def test_bad_causal_requests(vision, picture, kwargs, error, words):
    with pytest.raises(error, match=words):
        causal_map(vision, f"<|image_1|>\n{QUESTIONS[0]}", [picture], **kwargs)


@pytest.mark.slow
def test_three_maps_on_the_same_regions(vision, picture):
    prompt = f"<|image_1|>\n{QUESTIONS[0]}"
    cm = causal_map(vision, prompt, [picture])
    _, cache = vision.generate_with_cache(prompt, [picture], max_new_tokens=8)
    attribution = vision.attribute(prompt, [picture], units="image-regions")
    comparison = compare_maps(
        vision, prompt, [picture], cm, heat=cache.image_heat(0, sinks="show"), attribution=attribution
    )
    assert set(comparison.maps) == {"attention", "attribution", "causal"}
    assert all(len(v) == len(cm.regions) for v in comparison.maps.values())
    assert all(-1 <= r <= 1 for r in comparison.correlations.values())
    for curves in (comparison.deletion, comparison.insertion):
        assert set(curves) == {"attention", "attribution", "causal", "random"}
        assert all(len(v) == len(cm.regions) + 1 for v in curves.values())
    starts = {round(float(v[0]), 4) for v in comparison.deletion.values()}
    assert starts == {round(cm.base, 4)}  # nothing removed yet: the whole picture's score
    assert "rank correlation (Spearman)" in comparison.to_text()


def test_spearman():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


# --- several pictures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_several_pictures_each_have_their_own_views(vision, count):
    names = ["shapes.png", "chart.png", "word.png"][:count]
    pictures = [phi3lab.sample_image(n) for n in names]
    tags = "\n".join(f"<|image_{k + 1}|>" for k in range(count))
    answer, cache = vision.generate_with_cache(f"{tags}\nWhat is in the last picture?", pictures, max_new_tokens=4)
    spans = cache.inputs.images
    assert len(spans) == count and all(spans[k].end <= spans[k + 1].start for k in range(count - 1))
    for k, picture in enumerate(pictures):
        heat = cache.image_heat(k, sinks="show")
        assert (heat.width, heat.height) == picture.size
        shares = cache.image_to_image(k)
        assert shares.shape == (4, 4) and float(shares.min()) >= 0
    later_reads_earlier = cache.image_to_image(0, count - 1)
    assert 0 < float(later_reads_earlier.mean()) < 1
    with pytest.raises(ValueError, match="attention is causal"):
        cache.image_to_image(count - 1, 0)
    lens = patch_lens(cache, image=count - 1)
    assert lens.top_ids.shape[1] == spans[-1].num_tokens
