"""Native Phi-3-vision against the official code's outputs (../shared/reference/phi3v-tiny-random)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import phi3lab  # noqa: F401  registers phi3_v
from phi3lab.models.phi3_v import ChatFormatError, ImageOrderError  # the processor's own prompt rule

pytestmark = pytest.mark.slow  # heavy: the full test command runs it, --fast leaves it out

CASES = ["palette_1200x300", "photo_640x480", "portrait_200x1500", "text_multiturn", "two_images_swapped"]


@pytest.fixture(scope="module")
def fixture_dir(reference):
    return reference / "phi3v-tiny-random"


@pytest.fixture(scope="module")
def processor(fixture_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(fixture_dir / "model", trust_remote_code=False)


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request, fixture_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(
        fixture_dir / "model", trust_remote_code=False, dtype=torch.float32, attn_implementation=request.param
    )
    return m.eval()


def load_case(fixture_dir, name):
    case = np.load(fixture_dir / "cases" / f"{name}.npz")
    images = [
        Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")).convert(mode)
        for w, h, mode, seed in json.loads(str(case["image_specs"]))
    ]
    return case, images


@pytest.mark.parametrize("name", CASES)
def test_processor_reproduces_ids_and_pixels(fixture_dir, processor, name):
    case, images = load_case(fixture_dir, name)
    order = "official" if name == "two_images_swapped" else "strict"
    enc = processor(str(case["prompt"]), images or None, image_order=order)
    np.testing.assert_array_equal(enc["input_ids"].numpy(), case["input_ids"])
    np.testing.assert_array_equal(enc["attention_mask"].numpy(), case["attention_mask"])
    if images:
        pixels = enc["pixel_values"].numpy()
        np.testing.assert_array_equal(enc["image_sizes"].numpy(), case["image_sizes"])
        assert list(pixels.shape) == list(case["pixel_shape"])
        np.testing.assert_allclose(pixels.mean(axis=(3, 4)), case["pixel_crop_mean"], atol=1e-4)
        np.testing.assert_allclose(
            pixels.reshape(len(images), -1)[:, case["pixel_index"]], case["pixel_sample"], atol=1e-4
        )


@pytest.mark.parametrize("name", CASES)
def test_logits_match_the_official_model(fixture_dir, processor, model, name):
    case, images = load_case(fixture_dir, name)
    official = name == "two_images_swapped"
    enc = processor(str(case["prompt"]), images or None, image_order="official" if official else "strict")
    model.config.image_order = "official" if official else "strict"
    try:
        with torch.no_grad():
            logits = model(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                pixel_values=enc.get("pixel_values"),
                image_sizes=enc.get("image_sizes"),
            ).logits
    finally:
        model.config.image_order = "strict"
    got = logits[0, case["logit_positions"]][:, case["logit_vocab"]].numpy()
    np.testing.assert_allclose(got, case["logits"][0], atol=1e-3, rtol=0)
    if name == "two_images_swapped":
        assert enc["input_ids"].shape[1] > 4096  # the long RoPE factors are in play


def test_swapped_tags_are_refused_by_default(fixture_dir, processor, model):
    case, images = load_case(fixture_dir, "two_images_swapped")
    with pytest.raises(ChatFormatError, match=r"tag 1 of the prompt has <\|image_2\|> where <\|image_1\|> comes next"):
        processor(str(case["prompt"]), images)
    ids = torch.from_numpy(case["input_ids"])  # the official processor's ids, given to the model directly
    pixels = processor.image_processor(images)
    with pytest.raises(ImageOrderError, match="the 1. image run is <|image_2|>"):
        model(input_ids=ids, pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"])


def test_repeated_tag_is_refused(processor):
    img = Image.new("RGB", (336, 336))
    with pytest.raises(
        ChatFormatError, match=r"tag 2 of the prompt repeats <\|image_1\|> \(first used in tag 1 of the prompt\)"
    ):
        processor("<|image_1|> and again <|image_1|>", [img, img])


def test_tag_count_must_match_images(processor):
    with pytest.raises(ChatFormatError, match="1 image tag\\(s\\) but 2 image\\(s\\)"):
        processor("<|image_1|>", [Image.new("RGB", (9, 9))] * 2)


def test_input_ids_are_not_mutated(fixture_dir, processor, model):
    case, images = load_case(fixture_dir, "photo_640x480")
    enc = processor(str(case["prompt"]), images)
    before = enc["input_ids"].clone()
    with torch.no_grad():
        model(input_ids=enc["input_ids"], pixel_values=enc["pixel_values"], image_sizes=enc["image_sizes"])
    assert torch.equal(before, enc["input_ids"]) and int((before < 0).sum()) == 1921


def test_image_token_ids_equal_negative_ids(fixture_dir, processor, model):
    case, images = load_case(fixture_dir, "photo_640x480")
    neg = processor(str(case["prompt"]), images)
    tok = processor(str(case["prompt"]), images, image_ids="token")
    assert int((tok["input_ids"] == 32044).sum()) == 1921 and not bool((tok["input_ids"] < 0).any())
    with torch.no_grad():
        a = model(input_ids=neg["input_ids"], pixel_values=neg["pixel_values"], image_sizes=neg["image_sizes"]).logits
        b = model(input_ids=tok["input_ids"], pixel_values=tok["pixel_values"], image_sizes=tok["image_sizes"]).logits
    torch.testing.assert_close(a, b)


def test_image_positions_without_pixels_fail_clearly(model):
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=torch.tensor([[1, -1, -1, 2]]))


def test_left_padded_batch_equals_single_prompts(fixture_dir, processor, model):
    prompts = [
        ("<|user|>\n<|image_1|>\nWhat is this?<|end|>\n<|assistant|>\n", [(640, 480, 1)]),
        ("<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\n", [(336, 700, 2), (200, 200, 3)]),
        ("<|user|>\nNo picture here.<|end|>\n<|assistant|>\n", []),
    ]
    encs = []
    for text, specs in prompts:
        ims = [Image.fromarray((np.random.RandomState(s).rand(h, w, 3) * 255).astype("uint8")) for w, h, s in specs]
        encs.append(processor(text, ims or None, num_crops=4))
    batch = processor.collate(encs, pad_token_id=32000)
    with torch.no_grad():
        batched = model(**batch).logits
        for row, enc in enumerate(encs):
            single = model(**{k: v for k, v in enc.items() if k != "num_img_tokens"}).logits[0]
            n = single.shape[0]
            torch.testing.assert_close(batched[row, -n:], single, atol=1e-4, rtol=1e-4)


def test_generate_runs_the_vision_tower_once(fixture_dir, processor, model):
    case, images = load_case(fixture_dir, "photo_640x480")
    enc = processor(str(case["prompt"]), images)
    calls = []
    trunk = model.model.vision_embed_tokens.img_processor.vision_model
    handle = trunk.register_forward_hook(lambda *args: calls.append(args[1][0].shape[0]))
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                pixel_values=enc["pixel_values"],
                image_sizes=enc["image_sizes"],
                max_new_tokens=4,
                do_sample=False,
                eos_token_id=[32007],
                pad_token_id=32000,
            )
    finally:
        handle.remove()
    # once, on the 13 crops that hold pixels (global view + 3×4 grid), not the 4 of batch padding
    assert enc["pixel_values"].shape[1] == 17 and calls == [13] and out.shape[1] == enc["input_ids"].shape[1] + 4
    with torch.no_grad():  # the first new token is the argmax of a plain forward pass
        logits = model(
            input_ids=enc["input_ids"], pixel_values=enc["pixel_values"], image_sizes=enc["image_sizes"]
        ).logits
    assert int(out[0, enc["input_ids"].shape[1]]) == int(logits[0, -1].argmax())
