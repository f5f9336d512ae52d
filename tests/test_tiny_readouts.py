"""Linear read-outs of what a tiny vision model's image tokens carry (phi3lab.tiny.readouts)."""

import pytest
import torch

import phi3lab
from phi3lab.tiny.readouts import image_token_readouts

pytestmark = pytest.mark.slow  # each runs a vision model on 40 pictures

N = 40  # 30 pictures fit the read-outs, 10 score them


@pytest.fixture
def fresh_vision():
    """A vision lab of its own, free to be changed."""
    return phi3lab.load("tiny-vision", verbose=False)


def test_the_shipped_tokens_carry_colour_and_place_far_above_chance(vision):
    scores = image_token_readouts(vision, n=N)
    assert set(scores) == {f"{a}{c}" for a in ("colour", "kind", "place", "kind of shape") for c in ("", " chance")}
    assert all(0 <= v <= 1 for v in scores.values()), scores
    assert scores["colour"] > scores["colour chance"] + 0.5 and scores["place"] > scores["place chance"] + 0.5, scores
    assert scores["kind of shape"] > scores["kind of shape chance"], scores
    assert image_token_readouts(vision, n=N) == scores  # deterministic


def test_tokens_that_carry_nothing_read_out_at_chance(fresh_vision):
    """With the projector's last layer zeroed every image token is the same vector: no read-out can do
    better than always answering the commonest value, which is what chance measures."""
    with torch.no_grad():
        fresh_vision.model.model.vision_embed_tokens.img_projection[2].weight.zero_()
    scores = image_token_readouts(fresh_vision, n=N)
    for name in ("colour", "kind", "place", "kind of shape"):
        assert scores[name] == pytest.approx(scores[f"{name} chance"]), (name, scores)


def test_read_outs_refuse_too_few_pictures_a_text_model_and_another_geometry(fresh_vision, tiny):
    with pytest.raises(ValueError, match="too few"):
        image_token_readouts(fresh_vision, n=4)
    with pytest.raises(ValueError, match="need a vision model"):
        image_token_readouts(tiny, n=N)
    fresh_vision.processor.image_processor.num_crops = 4
    with pytest.raises(ValueError, match="num_crops=1"):
        image_token_readouts(fresh_vision, n=N)


def test_the_vision_card_prints_what_the_read_outs_measure(vision):
    """The figures the card of ``tiny-vision`` gives (its last table) are what the read-outs measure now,
    at their defaults (to a point: the fits run on whatever threads the machine has)."""
    from phi3lab.paths import embedded_dir
    from phi3lab.tiny.evaluate import READOUTS_TITLE

    card = (embedded_dir() / "phi3lab-tiny-vision" / "README.md").read_text()
    table = card.split(READOUTS_TITLE, 1)[1].split("```", 1)[0]
    printed = {line[:22].strip(): float(line[22:].strip().rstrip("%")) for line in table.strip().splitlines()}
    measured = image_token_readouts(vision)
    assert printed.keys() == measured.keys()
    assert all(abs(printed[k] - 100 * measured[k]) < 1.0 for k in printed), (printed, measured)
