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

__all__ = ["CROP", "HDLayout", "ImageToken", "hd_layout", "num_image_tokens", "image_tokens", "crop_boxes", "overlap"]

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


# --- every image token, mapped back to pixels ----------------------------------------------------

CELL = CROP // CELLS  # 28 canvas pixels per merged patch


@dataclasses.dataclass(frozen=True)
class ImageToken:
    """What one image token of the prompt is, and which pixels it covers.

    Attributes:
        index: position inside the image's run of tokens (0-based).
        kind: ``"crop"`` (a merged patch of an HD crop), ``"row_separator"`` (``sub_GN`` at the
            end of a row), ``"global_separator"`` (``glb_GN``) or ``"global"`` (a merged patch
            of the 336×336 global view).
        crop: 1-based crop number in row-major order for ``"crop"`` tokens, 0 for the global view,
            ``None`` for separators.
        row, col: the cell in the stitched crop grid (``"crop"``) or the 12×12 global grid.
        canvas_box: ``(x0, y0, x1, y1)`` on the padded HD canvas, ``None`` for separators.
        image_box: the same region in original-image pixels, clipped to the image; ``None`` when
            the cell lies entirely in the white padding (or for separators).
    """

    index: int
    kind: str
    crop: int | None
    row: int | None
    col: int | None
    canvas_box: tuple[float, float, float, float] | None
    image_box: tuple[float, float, float, float] | None


def _to_image(layout: HDLayout, box: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
    left, top, right, bottom = layout.pad_box
    x0, y0, x1, y1 = max(box[0], left), max(box[1], top), min(box[2], right), min(box[3], bottom)
    if x0 >= x1 or y0 >= y1:
        return None
    sx, sy = layout.width / (right - left), layout.height / (bottom - top)
    return ((x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx, (y1 - top) * sy)


def image_tokens(width: int, height: int, num_crops: int = 16) -> list[ImageToken]:
    """Every token of one image's run, in the order the model receives them.

    The stitched crop grid comes first, read row by row across the whole image (each row of
    ``cols·12`` cells closed by a ``row_separator``), then one ``global_separator``, then the
    12×13 global view.  ``len(image_tokens(w, h, n)) == num_image_tokens(w, h, n)``.

    Examples:
        >>> tokens = image_tokens(800, 600)
        >>> len(tokens), tokens[48].kind, tokens[1764].kind, tokens[1765].kind
        (1921, 'row_separator', 'global_separator', 'global')
    """
    layout = hd_layout(width, height, num_crops)
    rows, cols = layout.grid
    canvas_w, canvas_h = layout.padded
    out: list[ImageToken] = []
    width_cells = cols * CELLS
    for r in range(rows * CELLS):
        for c in range(width_cells + 1):
            index = len(out)
            if c == width_cells:
                out.append(ImageToken(index, "row_separator", None, r, None, None, None))
                continue
            box = (c * CELL, r * CELL, (c + 1) * CELL, (r + 1) * CELL)
            crop = (r // CELLS) * cols + c // CELLS + 1
            out.append(ImageToken(index, "crop", crop, r, c, box, _to_image(layout, box)))
    out.append(ImageToken(len(out), "global_separator", None, None, None, None, None))
    gx, gy = canvas_w / CELLS, canvas_h / CELLS
    for r in range(CELLS):
        for c in range(CELLS + 1):
            index = len(out)
            if c == CELLS:
                out.append(ImageToken(index, "row_separator", 0, r, None, None, None))
                continue
            box = (c * gx, r * gy, (c + 1) * gx, (r + 1) * gy)
            out.append(ImageToken(index, "global", 0, r, c, box, _to_image(layout, box)))
    return out


def crop_boxes(width: int, height: int, num_crops: int = 16) -> list[tuple[float, float, float, float] | None]:
    """Each crop's region in original-image pixels (row-major; ``None`` for an all-padding crop)."""
    layout = hd_layout(width, height, num_crops)
    rows, cols = layout.grid
    return [_to_image(layout, (c * CROP, r * CROP, (c + 1) * CROP, (r + 1) * CROP))
            for r in range(rows) for c in range(cols)]


def overlap(a: tuple[float, float, float, float] | None, b: tuple[float, float, float, float]) -> float:
    """Fraction of box ``a`` covered by box ``b`` (0 when ``a`` is ``None``)."""
    if a is None:
        return 0.0
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1])
    return w * h / area if area > 0 else 0.0
