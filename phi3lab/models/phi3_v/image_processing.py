"""``Phi3VImageProcessor``: the official HD transform, reproduced step for step.

For each image (PHI3_SPEC.md §2.5; sizes from :func:`phi3lab.patches.hd_layout`):

1. RGB (see :func:`phi3lab.images.to_rgb` for modes, arrays and files);
2. portrait images are transposed to landscape for the size rule;
3. PIL bilinear resize to ``s·336 × int(s·336 / ratio)``;
4. white padding of the height to a multiple of 336 (``int(pad / 2)`` on top), transposed back;
5. ``(x / 255 − mean) / std`` with CLIP's mean and std;
6. the global view: the whole padded canvas squashed to 336×336 with torch bicubic
   interpolation of the *normalised* tensor (no antialias);
7. the canvas cut into 336×336 crops in row-major order; global view first, then the crops, then
   all-zero crops up to ``num_crops + 1`` slots.

Outputs: ``pixel_values`` ``[images, num_crops + 1, 3, 336, 336]``, ``image_sizes`` ``[images, 2]``
holding the padded canvas as ``(H, W)``, and ``num_img_tokens`` per image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from phi3lab.images import to_rgb
from phi3lab.patches import CROP, hd_layout

__all__ = ["Phi3VImageProcessor", "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Phi3VImageProcessor(BaseImageProcessor):
    """Phi-3-vision's HD image processor.

    Args:
        num_crops: the crop budget (16 for Phi-3-vision; Phi-3.5-vision recommends 4 for
            several images and 16 for one); settable per call.
        image_mean, image_std: per-channel normalisation (CLIP's by default).
        num_img_tokens: tokens per crop after the 2×2 merge (144).
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(self, num_crops: int = 1, image_mean=CLIP_MEAN, image_std=CLIP_STD, num_img_tokens: int = 144,
                 **kwargs):
        kwargs.pop("auto_map", None)
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.num_crops = int(num_crops)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.num_img_tokens = int(num_img_tokens)

    def calc_num_image_tokens(self, width: int, height: int, num_crops: int | None = None) -> int:
        """Tokens for an image of this size, from the size alone."""
        return hd_layout(width, height, num_crops or self.num_crops).num_tokens

    def hd_tensor(self, image: Image.Image, num_crops: int) -> torch.Tensor:
        """Steps 2–5: the padded, normalised HD canvas ``[3, H, W]`` (float32).

        The padding is written as the normalised value of white and only the resized picture is
        converted and normalised, in place: the same numbers as normalising a padded uint8 canvas,
        without building one.
        """
        layout = hd_layout(image.width, image.height, num_crops)
        if layout.transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        size = layout.resized[::-1] if layout.transposed else layout.resized
        pixels = torch.from_numpy(np.array(image.resize(size, Image.Resampling.BILINEAR)))
        if layout.transposed:
            pixels = pixels.transpose(0, 1)  # back to the original orientation
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        width, height = layout.padded
        hd = ((1.0 - mean) / std).expand(3, height, width).contiguous()  # white everywhere
        left, top, right, bottom = layout.pad_box
        region = hd[:, top:bottom, left:right]
        region.copy_(pixels.permute(2, 0, 1)).div_(255.0).sub_(mean).div_(std)
        return hd

    def transform(self, image, num_crops: int | None = None) -> tuple[torch.Tensor, tuple[int, int], int]:
        """One image → ``([num_crops + 1, 3, 336, 336], (H, W), tokens)``."""
        crops_budget = int(num_crops or self.num_crops)
        hd = self.hd_tensor(to_rgb(image), crops_budget)
        h, w = hd.shape[1:]
        rows, cols = h // CROP, w // CROP
        out = torch.zeros(crops_budget + 1, 3, CROP, CROP, dtype=torch.float32)
        out[0] = F.interpolate(hd[None], size=(CROP, CROP), mode="bicubic", align_corners=False)[0]
        out[1:1 + rows * cols] = hd.view(3, rows, CROP, cols, CROP).permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)
        tokens = (rows * cols + 1) * self.num_img_tokens + 1 + (rows + 1) * 12
        return out, (h, w), tokens

    def preprocess(self, images, num_crops: int | None = None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Process one image or a list of images (PIL, numpy, or file paths)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images were given; pass one image or a list of images")
        results = [self.transform(im, num_crops) for im in images]
        data = {
            "pixel_values": torch.stack([r[0] for r in results]),
            "image_sizes": torch.tensor([r[1] for r in results], dtype=torch.long),
            "num_img_tokens": [r[2] for r in results],
        }
        return BatchFeature(data=data, tensor_type=None)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)
