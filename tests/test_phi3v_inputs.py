"""Bad inputs to Phi-3-vision's processor and model are refused with errors that name the problem
and the fix: crop counts, return_tensors, image-token ids, and pixels without image positions or
with image_sizes that do not fit them."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

import phi3lab  # noqa: F401  registers phi3_v
from phi3lab.models.phi3_v import Phi3VForCausalLM, Phi3VImageProcessor, Phi3VProcessor
from phi3lab.models.phi3_v.hd import _scale, check_num_crops, hd_layout, num_image_tokens
from phi3lab.paths import embedded_dir

FOLDER = embedded_dir() / "phi3lab-tiny-vision"
PROMPT = "<|user|>\n<|image_1|>\nWhat colour is the circle?<|end|>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def processor():
    return Phi3VProcessor.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def model():
    return Phi3VForCausalLM.from_pretrained(FOLDER).eval()


# --- num_crops ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crops", [0, -1, 17, 10**14, 10**18])
def test_crop_counts_outside_1_to_16_are_refused_at_once(crops):
    with pytest.raises(ValueError) as info:
        hd_layout(800, 600, crops)  # 10**18 used to loop for ever, 10**14 to die with an empty MemoryError
    message = str(info.value)
    assert f"num_crops={crops} is outside 1..16" in message
    assert "trained with up to 16 crops" in message and "num_crops + 1 slots" in message
    assert "pass a number from 1 to 16" in message


@pytest.mark.parametrize("crops", [2.5, 4.0, True, "4", None])
def test_crop_counts_that_are_not_ints_are_refused(crops):
    with pytest.raises(
        TypeError,
        match=r"num_crops must be a whole number of crops \(an int from 1 to 16\), got "
        rf"{repr(crops).replace('.', '[.]')} .*pass e\.g\. num_crops=4",
    ):
        check_num_crops(crops)


def test_numpy_integers_are_whole_numbers():
    assert check_num_crops(np.int64(4)) == 4 and hd_layout(800, 600, np.int64(4)).num_crops == 4


def test_the_scale_rule_is_bounded_and_unchanged():
    def reference(ratio, crops):  # the rule as the official code writes it: count up until it fails
        scale = 1
        while scale * math.ceil(scale / ratio) <= crops:
            scale += 1
        return scale - 1

    ratios = [1.0, 1.001, 4 / 3, 1.5, 16 / 9, 2.0, 2.5, 7.3, 10.0, 16.0, 100.0, 1e6]
    for crops in range(1, 17):
        for ratio in ratios:
            assert _scale(ratio, crops) == reference(ratio, crops), (ratio, crops)


def test_every_entry_point_checks_num_crops(processor, picture):
    with pytest.raises(ValueError, match="num_crops=0 is outside 1..16"):
        Phi3VImageProcessor(num_crops=0)
    with pytest.raises(TypeError, match="got 2.5"):
        processor.image_processor(picture, num_crops=2.5)
    with pytest.raises(ValueError, match=r"num_crops=1000000000000000000 is outside 1\.\.16"):
        processor(PROMPT, [picture], num_crops=10**18)
    with pytest.raises(ValueError, match=r"num_crops=100000000000000 is outside 1\.\.16"):
        Phi3VProcessor.from_pretrained(FOLDER, num_crops=10**14)
    with pytest.raises(ValueError, match="num_crops=0 is outside"):
        processor.image_processor.calc_num_image_tokens(800, 600, 0)
    by_hand = Phi3VImageProcessor(num_crops=4)
    by_hand.num_crops = 10**14  # set as an attribute: checked at the next call, before any memory is taken
    with pytest.raises(ValueError, match="outside 1..16"):
        by_hand(picture)


def test_a_config_with_a_bad_crop_count_is_refused(tmp_path):
    folder = shutil.copytree(FOLDER, tmp_path / "model")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(config | {"num_crops": 10**18}))
    with pytest.raises(ValueError, match="outside 1..16"):
        Phi3VProcessor.from_pretrained(folder)


def test_the_token_count_rule_accepts_every_allowed_budget():
    assert [num_image_tokens(1920, 1080, n) for n in (1, 4, 8, 16)] == [313, 757, 1045, 2353]


# --- return_tensors ---------------------------------------------------------------------------------------


def test_numpy_outputs_equal_the_torch_ones(processor, picture):
    pt, np_ = processor(PROMPT, [picture]), processor(PROMPT, [picture], return_tensors="np")
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert isinstance(np_[key], np.ndarray), key
        np.testing.assert_array_equal(np_[key], pt[key].numpy())
    assert np_.num_img_tokens == pt.num_img_tokens and "num_img_tokens" not in pt
    text_only = processor("<|user|>\nHi<|end|>\n<|assistant|>\n", return_tensors="np")
    assert isinstance(text_only["input_ids"], np.ndarray)
    assert isinstance(processor.image_processor(picture, return_tensors="np")["pixel_values"], np.ndarray)


@pytest.mark.parametrize("value", ["tf", "jax", None, "PT"])
def test_other_return_tensors_are_refused(processor, picture, value):
    with pytest.raises(ValueError, match=rf"return_tensors={value!r} is not supported; use 'pt' .* or 'np'"):
        processor(PROMPT, [picture], return_tensors=value)
    with pytest.raises(ValueError, match="use 'pt'"):
        processor.image_processor(picture, return_tensors=value)


# --- the <|image|> id -------------------------------------------------------------------------------------


def test_the_shipped_config_and_tokenizer_agree_on_the_image_token(processor, model):
    assert processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image|>") == 2011
    assert model.config.image_token_id == processor.image_token_id < model.config.vocab_size


def test_image_token_ids_reach_the_picture_like_negative_ids(processor, model, picture):
    negative = processor(PROMPT, [picture])
    token = processor(PROMPT, [picture], image_ids="token")
    assert (token["input_ids"] == processor.image_token_id).sum() == sum(negative.num_img_tokens)
    inputs = {k: negative[k] for k in ("pixel_values", "image_sizes", "attention_mask")}
    with torch.no_grad():
        a = model(input_ids=negative["input_ids"], **inputs).logits
        b = model(input_ids=token["input_ids"], **inputs).logits
        blind = model(input_ids=negative["input_ids"].clamp(min=0)).logits  # the picture ignored
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0, -1], blind[0, -1])


def test_a_config_that_names_another_image_id_is_caught_by_the_processor(tmp_path, picture):
    folder = shutil.copytree(FOLDER, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"image_token_id": 2044}))
    processor = Phi3VProcessor.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"config\.json's image_token_id is 2044.*set image_token_id to 2011"):
        processor(PROMPT, [picture], image_ids="token")
    assert processor(PROMPT, [picture])["input_ids"].min() == -1  # negative ids still work


class _NoImageToken:
    """A tokenizer without ``<|image|>``: unknown tokens map to the unknown id."""

    unk_token_id = 0

    def convert_tokens_to_ids(self, token):
        return self.unk_token_id


def test_image_ids_token_needs_a_tokenizer_with_the_token(picture):
    processor = Phi3VProcessor(Phi3VImageProcessor(), _NoImageToken())
    assert processor.image_token_id is None
    with pytest.raises(ValueError, match=r"this tokenizer has no such token; use image_ids='negative'"):
        processor(PROMPT, [picture], image_ids="token")


# --- the model's checks -------------------------------------------------------------------------------------


def test_pixels_without_image_positions_are_refused(processor, model, picture):
    enc = processor(PROMPT, [picture])
    with pytest.raises(
        ValueError,
        match=r"pixel_values were given but input_ids has no image positions .*"
        r"build input_ids with the processor",
    ):
        model(input_ids=enc["input_ids"].clamp(min=0), pixel_values=enc["pixel_values"], image_sizes=enc["image_sizes"])


@pytest.mark.parametrize(
    "sizes, match",
    [
        ([[336, 672]], r"image_sizes\[0\] is \(336, 672\): 1×2 = 2 crops, but pixel_values has only 1 crop slot"),
        ([[4704, 4704]], r"14×14 = 196 crops, but pixel_values has only 1 crop slot"),
        ([[300, 336]], r"image_sizes\[0\] is \(300, 336\), not a padded HD canvas"),
        ([[336, 336], [336, 336]], r"image_sizes has shape \(2, 2\), but pixel_values holds 1 image"),
        ([336, 336], r"image_sizes has shape \(2,\)"),
    ],
)
def test_image_sizes_that_do_not_fit_the_pixels_are_refused(processor, model, picture, sizes, match):
    enc = processor(PROMPT, [picture])  # num_crops=1: a global view and one crop slot
    with pytest.raises(ValueError, match=match) as info:
        model(input_ids=enc["input_ids"], pixel_values=enc["pixel_values"], image_sizes=torch.tensor(sizes))
    assert "pass the pixel_values and image_sizes that the processor returned together" in str(info.value)


def test_pixel_values_of_the_wrong_shape_are_refused(processor, model, picture):
    enc = processor(PROMPT, [picture])
    with pytest.raises(
        ValueError,
        match=r"pixel_values has shape \(2, 3, 336, 336\), but the model takes "
        r"\[images, num_crops \+ 1, 3, 336, 336\]",
    ):
        model(input_ids=enc["input_ids"], pixel_values=enc["pixel_values"][0], image_sizes=enc["image_sizes"])
