"""``Phi3VImageProcessor``: the official HD transform, reproduced step for step.

For each image (PHI3_SPEC.md §2.5; sizes from :func:`~phi3lab.models.phi3_v.hd.hd_layout`):

1. RGB (see :func:`~phi3lab.models.phi3_v.images.to_rgb` for modes, arrays and files);
2. portrait images are transposed to landscape for the size rule;
3. PIL bilinear resize to ``s·336 × int(s·336 / ratio)``;
4. white padding of the height to a multiple of 336 (``int(pad / 2)`` on top), transposed back;
5. ``(x / 255 − mean) / std`` with CLIP's mean and std;
6. the global view: the whole padded canvas squashed to 336×336 with torch bicubic
   interpolation of the *normalised* tensor (no antialias);
7. the canvas cut into 336×336 crops in row-major order; global view first, then the crops, then
   all-zero crops up to ``num_crops + 1`` slots.

Outputs: ``pixel_values`` ``[images, num_crops + 1, 3, 336, 336]``, ``image_sizes`` ``[images, 2]``
holding the padded canvas as ``(H, W)``, and ``num_img_tokens`` per image — torch tensors, or
numpy arrays with ``return_tensors="np"``.  ``num_crops`` is checked everywhere it enters
(:func:`~phi3lab.models.phi3_v.hd.check_num_crops`: an int from 1 to 16).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from phi3lab.models.phi3_v.hd import CELLS, CLIP_MEAN, CLIP_STD, CROP, check_num_crops, hd_layout, tokens_for_grid
from phi3lab.models.phi3_v.images import to_rgb

__all__ = ["Phi3VImageProcessor", "CLIP_MEAN", "CLIP_STD", "RETURN_TENSORS", "check_return_tensors", "as_batch"]

RETURN_TENSORS = ("pt", "np")


def check_return_tensors(return_tensors) -> str:
    """``"pt"`` or ``"np"``, or a ``ValueError`` naming the value and the choices."""
    if return_tensors not in RETURN_TENSORS:
        raise ValueError(
            f"return_tensors={return_tensors!r} is not supported; use 'pt' (torch tensors, the default) or 'np' "
            "(numpy arrays)"
        )
    return return_tensors


def as_batch(data: dict, return_tensors: str) -> BatchFeature:
    """``data`` (torch tensors and lists) as a :class:`BatchFeature` of torch tensors (``"pt"``) or
    numpy arrays (``"np"``); lists stay lists."""
    if check_return_tensors(return_tensors) == "np":
        data = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
    return BatchFeature(data=data, tensor_type=None)


class Phi3VImageProcessor(BaseImageProcessor):
    """Phi-3-vision's HD image processor.

    Args:
        num_crops: the crop budget, an int from 1 to 16 (checkpoints set 16 for Phi-3-vision;
            Phi-3.5-vision recommends 4 for several images and 16 for one); settable per call.
            The default 1 is the official class's, used when ``preprocessor_config.json`` has none.
        image_mean, image_std: per-channel normalisation (CLIP's by default).
        num_img_tokens: tokens per crop after the 2×2 merge (144, the only value the model takes).
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 1,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        num_img_tokens: int = CELLS * CELLS,
        **kwargs,
    ):
        kwargs.pop("auto_map", None)
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.num_crops = check_num_crops(num_crops)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        if num_img_tokens != CELLS * CELLS:
            raise ValueError(
                f"num_img_tokens={num_img_tokens!r}, but Phi-3-vision merges each crop to {CELLS}×{CELLS} = "
                f"{CELLS * CELLS} tokens; remove num_img_tokens from preprocessor_config.json or set it to {CELLS * CELLS}"
            )
        self.num_img_tokens = CELLS * CELLS

    def _crops(self, num_crops) -> int:
        """This call's crop budget, checked (the attribute may have been set by hand since)."""
        return check_num_crops(self.num_crops if num_crops is None else num_crops)

    def calc_num_image_tokens(self, width: int, height: int, num_crops: int | None = None) -> int:
        """Tokens for an image of this size, from the size alone."""
        return hd_layout(width, height, self._crops(num_crops)).num_tokens

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
        crops_budget = self._crops(num_crops)
        hd = self.hd_tensor(to_rgb(image), crops_budget)
        h, w = hd.shape[1:]
        rows, cols = h // CROP, w // CROP
        out = torch.zeros(crops_budget + 1, 3, CROP, CROP, dtype=torch.float32)
        out[0] = F.interpolate(hd[None], size=(CROP, CROP), mode="bicubic", align_corners=False)[0]
        out[1 : 1 + rows * cols] = hd.view(3, rows, CROP, cols, CROP).permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)
        return out, (h, w), tokens_for_grid(rows, cols)

    def preprocess(self, images, num_crops: int | None = None, return_tensors: str = "pt", **kwargs) -> BatchFeature:
        """Process one image or a list of images (PIL, numpy, or file paths).

        ``return_tensors`` is ``"pt"`` (torch tensors) or ``"np"`` (numpy arrays); anything else is refused.
        """
        check_return_tensors(return_tensors)
        crops = self._crops(num_crops)
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images were given; pass one image or a list of images")
        results = [self.transform(im, crops) for im in images]
        data = {
            "pixel_values": torch.stack([r[0] for r in results]),
            "image_sizes": torch.tensor([r[1] for r in results], dtype=torch.long),
            "num_img_tokens": [r[2] for r in results],
        }
        return as_batch(data, return_tensors)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)
