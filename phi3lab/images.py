"""Images for phi3lab: the input rules of the HD transform, and the sample pictures it ships.

:func:`open_image` and :func:`to_rgb` (how files, modes and arrays become 8-bit RGB, with clear
errors) belong to the Phi-3-vision processor and live in :mod:`phi3lab.models.phi3_v.images`;
they are re-exported here.  :func:`sample_image` opens one of the pictures shipped in
``data/images`` wherever phi3lab is installed (a checkout or a wheel), so notebooks and the
README never depend on the working directory.
"""

from __future__ import annotations

from phi3lab.models.phi3_v.images import MAX_PIXELS, ImageInputError, open_image, to_rgb
from phi3lab.paths import data_dir

__all__ = ["ImageInputError", "open_image", "to_rgb", "MAX_PIXELS", "sample_image", "sample_image_names"]


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
            "For a picture of your own, use phi3lab.images.open_image(path)"
        )
    return open_image(data_dir() / "images" / name)
