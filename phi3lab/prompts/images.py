"""Images for phi3lab: the input rules of the HD transform, and the sample pictures it ships.

:func:`open_image` and :func:`to_rgb` (how files, modes and arrays become 8-bit RGB, with clear
errors) belong to the Phi-3-vision processor and live in :mod:`phi3lab.models.phi3_v.images`;
they are re-exported here.  :func:`sample_image` opens one of the pictures shipped in
``data/images`` wherever phi3lab is installed (a checkout or a wheel), so notebooks and the
README never depend on the working directory.  :func:`text_picture` draws words on a plain picture
(the image-borne probes and the embedded reader's training pictures are drawn by it alike).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from phi3lab.models.phi3_v.images import MAX_PIXELS, ImageInputError, open_image, to_rgb
from phi3lab.paths import data_dir

__all__ = [
    "ImageInputError",
    "open_image",
    "to_rgb",
    "MAX_PIXELS",
    "sample_image",
    "sample_image_names",
    "text_picture",
    "text_lines",
    "text_size",
]


def sample_image_names() -> list[str]:
    """The file names of the shipped sample pictures (``data/images``), sorted."""
    folder = data_dir() / "images"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def sample_image(name: str = "shapes.png"):
    """A picture shipped with phi3lab, opened as a PIL image (upright, fully read).

    Raises:
        ImageInputError: no shipped picture has that name; the message lists those that exist.

    Examples:
        >>> sample_image().size
        (332, 368)
        >>> "chart.png" in sample_image_names()
        True
    """
    names = sample_image_names()
    if name not in names:
        shown = ", ".join(repr(n) for n in names) or f"none: {data_dir() / 'images'} is missing"
        raise ImageInputError(
            f"no sample image named {name!r}; the shipped ones are {shown}. "
            "For a picture of your own, use phi3lab.prompts.images.open_image(path)"
        )
    return open_image(data_dir() / "images" / name)


def text_lines(text: str, width: int, font_size: int, margin: int) -> list[str]:
    """``text`` wrapped to the lines :func:`text_picture` draws (about 0.55 × ``font_size`` per character)."""
    per_line = max(8, int((width - 2 * margin) / (0.55 * font_size)))
    return textwrap.wrap(text, per_line) or [""]


def text_size(text: str, *, width: int = 448, font_size: int = 58, margin: int = 24) -> tuple[int, int]:
    """The ``(width, height)`` of :func:`text_picture` for ``text``: at least 160 pixels high."""
    lines = text_lines(text, width, font_size, margin)
    return width, max(160, 2 * margin + int(font_size * 1.25) * len(lines))


def text_picture(
    text: str, *, width: int = 448, font_size: int = 58, margin: int = 24, on_line: Callable | None = None
):
    """``text`` drawn black on white with PIL's default font, wrapped to ``width`` pixels, one line every
    1.25 × ``font_size``; the picture is :func:`text_size` big.  ``on_line(xy, line, font)`` is called
    for each line drawn (where it starts, its text, the font).

    Examples:
        >>> text_picture("pick lock").size
        (448, 160)
    """
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", text_size(text, width=width, font_size=font_size, margin=margin), (255, 255, 255))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=font_size)
    for k, line in enumerate(text_lines(text, width, font_size, margin)):
        xy = (margin, margin + k * int(font_size * 1.25))
        draw.text(xy, line, fill=(0, 0, 0), font=font)
        if on_line is not None:
            on_line(xy, line, font)
    return image
