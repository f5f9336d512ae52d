"""Phi-3-vision's HD transform in numbers: its constants and its size rule (no pixels).

This module is the one home of these facts; :mod:`phi3lab.prompts.patches`, the image processor, the
model and phi3lab's notebooks import them from here.  PHI3_SPEC.md §2.4–2.6 and §5.1.

The official processor turns every image into a landscape canvas of 336×336 crops:

1. a portrait image (width < height) is transposed, so the rule below always sees landscape;
2. the scale ``s`` is the largest integer with ``s · ⌈s / ratio⌉ ≤ num_crops`` (ratio = W/H);
3. the image is resized to width ``s·336`` and height ``int(s·336 / ratio)``;
4. the height is padded with white up to the next multiple of 336 (top gets ``int(pad/2)``);
5. the result is transposed back for portrait images, so their padding ends up left and right.

Each crop becomes 12×12 merged patches; one separator token ends every row of the stitched grid,
a ``glb_GN`` token separates it from the 12×13 global view, so an image of ``h × w`` crops costs
``(h·w + 1)·144 + 1 + (h + 1)·12`` tokens (:func:`tokens_for_grid`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

__all__ = [
    "CROP",
    "CELLS",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_NUM_CROPS",
    "MAX_NUM_CROPS",
    "HDLayout",
    "check_num_crops",
    "hd_layout",
    "num_image_tokens",
    "tokens_for_grid",
]

CROP = 336  # CLIP ViT-L/14-336 input size: the side of every crop and of the global view
CELLS = 12  # merged patches per crop side (24 patches of 14 px, merged 2×2)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's per-channel normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_NUM_CROPS = 16
"""The default of the functions here that count from an image size alone (Phi-3-vision's published value).

A loaded model's crop budget is not this: it is its processor's, read from the checkpoint's
``preprocessor_config.json`` (Phi-3-vision 16, Phi-3.5-vision 4), which ``Phi3VImageProcessor``
holds and phi3lab's counters read (``lab.num_crops``)."""
MAX_NUM_CROPS = 16  # the most crops Phi-3-vision was trained with


def check_num_crops(num_crops, where: str = "num_crops") -> int:
    """``num_crops`` as an int in ``1..MAX_NUM_CROPS``, or a ``TypeError``/``ValueError`` saying why.

    Examples:
        >>> check_num_crops(4)
        4
        >>> check_num_crops(0)
        Traceback (most recent call last):
        ...
        ValueError: num_crops=0 is outside 1..16: Phi-3-vision was trained with up to 16 crops per image and the processor pads pixel_values to num_crops + 1 slots per image; pass a number from 1 to 16 (16 for one image, 4 for several)
    """
    if isinstance(num_crops, bool) or not isinstance(num_crops, numbers.Integral):
        raise TypeError(
            f"{where} must be a whole number of crops (an int from 1 to {MAX_NUM_CROPS}), got {num_crops!r} "
            f"({type(num_crops).__name__}); pass e.g. {where}=4"
        )
    if not 1 <= num_crops <= MAX_NUM_CROPS:
        raise ValueError(
            f"{where}={num_crops} is outside 1..{MAX_NUM_CROPS}: Phi-3-vision was trained with up to "
            f"{MAX_NUM_CROPS} crops per image and the processor pads pixel_values to num_crops + 1 slots per "
            f"image; pass a number from 1 to {MAX_NUM_CROPS} (16 for one image, 4 for several)"
        )
    return int(num_crops)


def tokens_for_grid(rows: int, cols: int) -> int:
    """Image tokens of an HD canvas of ``rows × cols`` crops: ``(h·w + 1)·144 + 1 + (h + 1)·12``.

    The crops' 12×12 cells with a separator closing each of the ``rows·12`` grid rows, one
    ``glb_GN``, then the 12×12 global view with its 12 row separators.

    Examples:
        >>> tokens_for_grid(1, 1), tokens_for_grid(3, 4), tokens_for_grid(4, 4)
        (313, 1921, 2509)
    """
    return (rows * cols + 1) * CELLS * CELLS + 1 + (rows + 1) * CELLS


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
        return tokens_for_grid(*self.grid)

    def to_text(self) -> str:
        """The layout in one line: size, crop budget, what the size rule made of it, the token count."""
        turned = ", transposed" if self.transposed else ""
        return (
            f"{self.width}×{self.height} with num_crops {self.num_crops}{turned}: resized to "
            f"{self.resized[0]}×{self.resized[1]}, padded to {self.padded[0]}×{self.padded[1]}, "
            f"{self.grid[0]}×{self.grid[1]} crops of {CROP}, {self.num_tokens} tokens"
        )

    __str__ = to_text

    def __repr__(self) -> str:
        return f"HDLayout({self.to_text()})"

    def _repr_html_(self) -> str:  # this package stands alone: plain HTML here, no phi3lab helpers
        rows = [
            ("image", f"{self.width}×{self.height}" + (" (portrait: transposed for the size rule)" * self.transposed)),
            ("num_crops", str(self.num_crops)),
            ("resized", f"{self.resized[0]}×{self.resized[1]}"),
            ("padded canvas", f"{self.padded[0]}×{self.padded[1]} (pad box {self.pad_box})"),
            ("crops", f"{self.grid[0]}×{self.grid[1]} of {CROP}×{CROP}"),
            ("image tokens", str(self.num_tokens)),
        ]
        cells = "".join(
            f'<tr><th style="text-align:left;font-weight:normal;padding-right:1em">{k}</th><td>{v}</td></tr>'
            for k, v in rows
        )
        return f'<div class="phi3lab-repr"><b>HD layout</b><table>{cells}</table></div>'


def _scale(ratio: float, num_crops: int) -> int:
    """The largest ``s`` with ``s · ⌈s / ratio⌉ ≤ num_crops`` for ``ratio ≥ 1``.

    The product grows with ``s`` and is at least ``s``, so ``s`` lies in ``1..num_crops``: the
    search is bounded by the crop budget (at most 16 steps), whatever the aspect ratio.
    """
    return max(s for s in range(1, num_crops + 1) if s * math.ceil(s / ratio) <= num_crops)


def hd_layout(width: int, height: int, num_crops: int = DEFAULT_NUM_CROPS) -> HDLayout:
    """The HD canvas for an image of ``width × height`` pixels.

    Raises:
        ValueError: a size below 1, ``num_crops`` outside 1..16, or an aspect ratio so extreme
            that the resized height rounds to zero pixels.
        TypeError: ``num_crops`` that is not an int (``2.5``, ``True``).

    Examples:
        >>> hd_layout(800, 600).grid, hd_layout(800, 600).num_tokens
        ((3, 4), 1921)
        >>> hd_layout(600, 800).padded, hd_layout(600, 800).num_tokens
        ((1008, 1344), 1933)
    """
    num_crops = check_num_crops(num_crops)
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"an image must be at least 1×1 pixel, got {width}×{height}")
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
        num_crops=num_crops,
        transposed=transposed,
        resized=resized,
        padded=padded,
        pad_box=box,
        grid=(padded[1] // CROP, padded[0] // CROP),
    )


def num_image_tokens(width: int, height: int, num_crops: int = DEFAULT_NUM_CROPS) -> int:
    """Tokens Phi-3-vision spends on one image of this size.

    Examples:
        >>> num_image_tokens(1344, 1344), num_image_tokens(50, 8000), num_image_tokens(640, 480, 1)
        (2509, 2653, 313)
    """
    return hd_layout(width, height, num_crops).num_tokens
