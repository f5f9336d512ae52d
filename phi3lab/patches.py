"""Phi-3-vision's HD image geometry, computed from image sizes alone (no pixels).

The official processor turns every image into a landscape canvas of 336×336 crops:

1. a portrait image (width < height) is transposed, so the rule below always sees landscape;
2. the scale ``s`` is the largest integer with ``s · ⌈s / ratio⌉ ≤ num_crops`` (ratio = W/H);
3. the image is resized to width ``s·336`` and height ``int(s·336 / ratio)``;
4. the height is padded with white up to the next multiple of 336 (top gets ``int(pad/2)``);
5. the result is transposed back for portrait images, so their padding ends up left and right.

Each crop becomes 12×12 merged patches; one separator token ends every row of the stitched grid,
a ``glb_GN`` token separates it from the 12×13 global view, so an image of ``h × w`` crops costs
``(h·w + 1)·144 + 1 + (h + 1)·12`` tokens.  Facts: PHI3_SPEC.md §2.5–2.6 and §5.1.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["CROP", "HDLayout", "hd_layout", "num_image_tokens"]

CROP = 336  # CLIP ViT-L/14-336 input size
CELLS = 12  # merged patches per crop side (24 patches / 2×2 merge)


@dataclasses.dataclass(frozen=True)
class HDLayout:
    """Where an image of ``width × height`` lands in the HD canvas.

    Attributes:
        width, height: the original image size.
        num_crops: the crop budget it was laid out for.
        transposed: the image is portrait and was transposed for the size rule.
        resized: ``(W, H)`` after resizing, before padding (in the final orientation).
        padded: ``(W, H)`` of the padded HD canvas (a multiple of 336 both ways).
        pad_box: ``(left, top, right, bottom)`` of the resized image inside the canvas.
        grid: ``(rows, cols)`` of 336×336 crops.
    """

    width: int
    height: int
    num_crops: int
    transposed: bool
    resized: tuple[int, int]
    padded: tuple[int, int]
    pad_box: tuple[int, int, int, int]
    grid: tuple[int, int]

    @property
    def image_sizes(self) -> tuple[int, int]:
        """``(H, W)`` of the padded canvas, as the processor reports it in ``image_sizes``."""
        return self.padded[1], self.padded[0]

    @property
    def num_tokens(self) -> int:
        rows, cols = self.grid
        return (rows * cols + 1) * CELLS * CELLS + 1 + (rows + 1) * CELLS


def _scale(ratio: float, num_crops: int) -> int:
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    return scale - 1


def hd_layout(width: int, height: int, num_crops: int = 16) -> HDLayout:
    """The HD canvas for an image of ``width × height`` pixels.

    Raises:
        ValueError: a size or ``num_crops`` below 1, or an aspect ratio so extreme that the
            resized height rounds to zero pixels.

    Examples:
        >>> hd_layout(800, 600).grid, hd_layout(800, 600).num_tokens
        ((3, 4), 1921)
        >>> hd_layout(600, 800).padded, hd_layout(600, 800).num_tokens
        ((1008, 1344), 1933)
    """
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"an image must be at least 1×1 pixel, got {width}×{height}")
    if int(num_crops) < 1:
        raise ValueError(f"num_crops must be at least 1, got {num_crops}")
    transposed = width < height
    w, h = (height, width) if transposed else (width, height)
    ratio = w / h
    scale = _scale(ratio, num_crops)
    new_w = scale * CROP
    new_h = int(new_w / ratio)
    if new_h < 1:
        raise ValueError(
            f"a {width}×{height} image is too elongated for num_crops={num_crops}: its short side "
            f"would shrink to {new_w / ratio:.2f} px; crop or pad it to an aspect ratio under {new_w}:1"
        )
    padded_h = math.ceil(new_h / CROP) * CROP
    top = int((padded_h - new_h) / 2)
    box = (0, top, new_w, top + new_h)
    resized, padded = (new_w, new_h), (new_w, padded_h)
    if transposed:
        box = (box[1], box[0], box[3], box[2])
        resized, padded = resized[::-1], padded[::-1]
    return HDLayout(
        width=int(width),
        height=int(height),
        num_crops=int(num_crops),
        transposed=transposed,
        resized=resized,
        padded=padded,
        pad_box=box,
        grid=(padded[1] // CROP, padded[0] // CROP),
    )


def num_image_tokens(width: int, height: int, num_crops: int = 16) -> int:
    """Tokens Phi-3-vision spends on one image of this size.

    Examples:
        >>> num_image_tokens(1344, 1344), num_image_tokens(50, 8000), num_image_tokens(640, 480, 1)
        (2509, 2653, 313)
    """
    return hd_layout(width, height, num_crops).num_tokens
