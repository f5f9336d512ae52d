"""Phi-3-vision's image tokens mapped back to pixels, from image sizes alone (no pixels).

The HD rule itself — portrait images transposed, the largest scale ``s`` with
``s · ⌈s / ratio⌉ ≤ num_crops``, resize to ``s·336`` wide, white padding to a multiple of 336 — and
the token formula ``(h·w + 1)·144 + 1 + (h + 1)·12`` live with the model, in
:mod:`phi3lab.models.phi3_v.hd`; :func:`hd_layout`, :func:`num_image_tokens`, :data:`CROP` and
:data:`CELLS` are re-exported here.  This module adds what analysis needs on top: every token of
an image's run with the canvas and image pixels it covers (:func:`image_tokens`), each crop's
region (:func:`crop_boxes`) and box overlaps.  Facts: PHI3_SPEC.md §2.5–2.6 and §5.1.

Examples:
    >>> hd_layout(800, 600).grid, num_image_tokens(800, 600)
    ((3, 4), 1921)
"""

from __future__ import annotations

import dataclasses

from phi3lab.models.phi3_v.hd import CELLS, CROP, DEFAULT_NUM_CROPS, HDLayout, hd_layout, num_image_tokens

__all__ = [
    "CROP",
    "CELLS",
    "CELL",
    "HDLayout",
    "ImageToken",
    "hd_layout",
    "num_image_tokens",
    "image_tokens",
    "crop_boxes",
    "overlap",
    "ImageRegion",
    "image_regions",
]


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

    def __repr__(self) -> str:
        what = {"crop": f"crop {self.crop}", "global": "global view"}.get(self.kind, self.kind)
        where = "" if self.row is None else (f" row {self.row}" if self.col is None else f" r{self.row}c{self.col}")
        box = (
            " padding"
            if self.image_box is None
            else " pixels ({:.0f}, {:.0f})–({:.0f}, {:.0f})".format(*self.image_box)
        )
        return f"ImageToken(#{self.index} {what}{where}{'' if self.canvas_box is None else box})"


def _to_image(layout: HDLayout, box: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
    left, top, right, bottom = layout.pad_box
    x0, y0, x1, y1 = max(box[0], left), max(box[1], top), min(box[2], right), min(box[3], bottom)
    if x0 >= x1 or y0 >= y1:
        return None
    sx, sy = layout.width / (right - left), layout.height / (bottom - top)
    return ((x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx, (y1 - top) * sy)


def image_tokens(width: int, height: int, num_crops: int = DEFAULT_NUM_CROPS) -> list[ImageToken]:
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


def crop_boxes(
    width: int, height: int, num_crops: int = DEFAULT_NUM_CROPS
) -> list[tuple[float, float, float, float] | None]:
    """Each crop's region in original-image pixels (row-major; ``None`` for an all-padding crop)."""
    layout = hd_layout(width, height, num_crops)
    rows, cols = layout.grid
    return [
        _to_image(layout, (c * CROP, r * CROP, (c + 1) * CROP, (r + 1) * CROP))
        for r in range(rows)
        for c in range(cols)
    ]


def overlap(a: tuple[float, float, float, float] | None, b: tuple[float, float, float, float]) -> float:
    """Fraction of box ``a`` covered by box ``b`` (0 when ``a`` is ``None``)."""
    if a is None:
        return 0.0
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1])
    return w * h / area if area > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class ImageRegion:
    """A square block of the stitched crop grid and every token of the image that shows it.

    Attributes:
        row, col: the block's place on the grid of blocks (``region_size`` cells a side).
        crop: the 1-based crop the block lies in (blocks never straddle crops).
        tokens: indices in the image's run of tokens: the block's crop cells, then the global-view
            cells whose centre falls inside it (the same part of the picture, seen whole).
        canvas_box: the block on the padded HD canvas.
        image_box: the block's picture pixels in original-image coordinates (never ``None``: blocks of
            white padding alone are left out).
    """

    row: int
    col: int
    crop: int
    tokens: tuple[int, ...]
    canvas_box: tuple[float, float, float, float]
    image_box: tuple[float, float, float, float]

    def __repr__(self) -> str:
        box = "({:.0f}, {:.0f})–({:.0f}, {:.0f})".format(*self.image_box) if self.image_box else "padding"
        view = "global view" if self.crop == 0 else f"crop {self.crop}"
        return f"ImageRegion(r{self.row}c{self.col} of {view}, {len(self.tokens)} tokens, pixels {box})"

    @property
    def label(self) -> str:
        return f"r{self.row}c{self.col}"


def _centre_in(box, canvas) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return canvas[0] <= cx < canvas[2] and canvas[1] <= cy < canvas[3]


def image_regions(
    width: int, height: int, num_crops: int = DEFAULT_NUM_CROPS, region_size: int = 4
) -> list[ImageRegion]:
    """The picture cut into ``region_size × region_size`` blocks of merged-patch cells, crop by crop.

    ``region_size`` must divide a crop's 12 cells (1, 2, 3, 4, 6 or 12), so no block straddles two
    crops; blocks that show only the white padding are left out.  Attribution by image region and
    causal image maps remove the same blocks.

    Examples:
        >>> regions = image_regions(336, 336, num_crops=1, region_size=4)
        >>> len(regions), regions[0].label, len(regions[0].tokens)  # 16 crop cells + 16 global cells
        (9, 'r0c0', 32)
    """
    if isinstance(region_size, bool) or not isinstance(region_size, int) or region_size < 1 or CELLS % region_size:
        raise ValueError(
            f"region_size={region_size!r} must divide a crop's {CELLS} cells (1, 2, 3, 4, 6 or 12), so that every "
            "region lies inside one crop"
        )
    layout = hd_layout(width, height, num_crops)
    rows, cols = layout.grid
    tokens = image_tokens(width, height, num_crops)
    crop_cells = [t for t in tokens if t.kind == "crop"]
    glob = [t for t in tokens if t.kind == "global"]
    size = region_size * CELL
    out = []
    for r in range(rows * CELLS // region_size):
        for c in range(cols * CELLS // region_size):
            canvas = (c * size, r * size, (c + 1) * size, (r + 1) * size)
            cells = [
                t
                for t in crop_cells
                if r * region_size <= t.row < (r + 1) * region_size and c * region_size <= t.col < (c + 1) * region_size
            ]
            boxes = [t.image_box for t in cells if t.image_box is not None]
            if not boxes:
                continue  # all white padding: nothing of the picture there
            box = (
                min(b[0] for b in boxes),
                min(b[1] for b in boxes),
                max(b[2] for b in boxes),
                max(b[3] for b in boxes),
            )
            seen_whole = [t for t in glob if _centre_in(t.canvas_box, canvas)]
            out.append(ImageRegion(r, c, cells[0].crop, tuple(t.index for t in cells + seen_whole), canvas, box))
    return out
