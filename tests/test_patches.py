"""Image-patch geometry against the processor's pixels and the model's own token layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from phi3lab.models.phi3_v import Phi3VImageProcessor
from phi3lab.prompts.patches import CELL, crop_boxes, hd_layout, image_tokens, num_image_tokens, overlap

SIZES = [(800, 600), (600, 800), (1920, 1080), (200, 1500), (1000, 100), (336, 336), (57, 91)]


@pytest.mark.parametrize("num_crops", [1, 4, 16])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_token_list_matches_counts_and_layout(size, num_crops):
    tokens = image_tokens(*size, num_crops)
    rows, cols = hd_layout(*size, num_crops).grid
    assert len(tokens) == num_image_tokens(*size, num_crops)
    kinds = [t.kind for t in tokens]
    assert kinds.count("global_separator") == 1
    assert kinds.count("row_separator") == rows * 12 + 12
    assert kinds.count("crop") == rows * cols * 144 and kinds.count("global") == 144
    assert kinds.index("global_separator") == rows * 12 * (cols * 12 + 1)


@pytest.mark.parametrize("size, num_crops", [((300, 200), 4), ((200, 300), 4), ((700, 260), 16), ((150, 500), 16)])
def test_cells_cover_the_right_pixels(size, num_crops):
    """A red square on white: the crop cells whose image box overlaps it are red in the processor's
    pixels, cells in the padding are white and have no image box — portrait images included."""
    w, h = size
    image = Image.new("RGB", size, (255, 255, 255))
    square = (w // 3, h // 3, w // 3 + w // 4, h // 3 + h // 4)
    image.paste((255, 0, 0), square)
    proc = Phi3VImageProcessor(num_crops=num_crops)
    pixels = proc(image)["pixel_values"][0]
    mean = torch.tensor(proc.image_mean).view(3, 1, 1)
    std = torch.tensor(proc.image_std).view(3, 1, 1)
    rgb = (pixels * std + mean).clamp(0, 1)  # back to 0..1
    checked = 0
    for t in image_tokens(w, h, num_crops):
        if t.kind != "crop":
            continue
        r, c = t.row % 12, t.col % 12
        cell = rgb[t.crop, :, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL]
        redness = float((cell[0] - cell[1]).mean())
        if t.image_box is None:
            assert float(cell.min()) > 0.98, "a padding cell is not white"
        elif overlap(t.image_box, square) > 0.9:
            assert redness > 0.8, (t, redness)
            checked += 1
        elif overlap(t.image_box, square) == 0:
            assert redness < 0.1, (t, redness)
    assert checked > 0


def test_crop_boxes_tile_the_image():
    boxes = crop_boxes(800, 600, 16)  # 1344×1008 canvas, no padding: 3×4 crops
    assert len(boxes) == 12
    np.testing.assert_allclose(boxes[0], (0, 0, 800 / 4, 600 / 3))
    np.testing.assert_allclose(boxes[-1], (600, 400, 800, 600))
    padded = crop_boxes(1300, 867, 16)  # resized to 1344×896 and padded by 56 px top and bottom
    assert padded[0][1] == 0 and padded[0][3] == pytest.approx((336 - 56) * 867 / 896)


def test_separators_sit_where_the_model_puts_sub_gn_and_glb_gn(reference):
    """The model's own image embedding has the projected separators exactly at the indices the
    geometry calls row and global separators."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        reference / "phi3v-tiny-random" / "model", trust_remote_code=False, dtype=torch.float32
    ).eval()
    emb = model.model.vision_embed_tokens
    proc = Phi3VImageProcessor(num_crops=4)
    for size in [(500, 300), (300, 500)]:
        image = Image.fromarray((np.random.RandomState(0).rand(size[1], size[0], 3) * 255).astype("uint8"))
        out = proc(image)
        with torch.no_grad():
            features = emb(out["pixel_values"], out["image_sizes"])[0]
            sub = emb.img_projection(emb.sub_GN.reshape(1, -1))[0]
            glb = emb.img_projection(emb.glb_GN.reshape(1, -1))[0]
        tokens = image_tokens(*size, 4)
        assert features.shape[0] == len(tokens)
        for t in tokens:
            if t.kind == "row_separator":
                torch.testing.assert_close(features[t.index], sub)
            elif t.kind == "global_separator":
                torch.testing.assert_close(features[t.index], glb)
            else:
                assert not torch.allclose(features[t.index], sub)
