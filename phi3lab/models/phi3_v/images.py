"""Reading and normalising images before the HD transform, with clear errors for bad input.

What happens to each kind of input (the processor calls :func:`to_rgb` on every image):

* **files** (:func:`open_image`): read fully so a truncated or corrupt file fails here, with its
  name; the EXIF orientation is applied, so a phone photo is upright as a viewer shows it;
  pictures over :data:`MAX_PIXELS` are refused as possible decompression bombs;
* **palette, grayscale, CMYK, YCbCr, LAB**: converted to RGB by PIL, as the official processor does;
* **transparency** (RGBA, LA, palette with transparency): the alpha channel is dropped, exactly as
  the official ``convert("RGB")`` does (transparent pixels keep their stored colour);
* **16- and 32-bit integer and float grayscale** (``I;16``, ``I``, ``F``): scaled to 8 bits from
  the type's range (PIL's own conversion would clip everything above 255 to white);
* **numpy arrays** ``H×W``, ``H×W×1``, ``H×W×3`` or ``H×W×4``, uint8 (or floats in 0..1);
* sizes: any image of at least 1×1 pixel; aspect ratios too extreme for ``num_crops`` are
  refused by :func:`phi3lab.models.phi3_v.hd.hd_layout`.

:mod:`phi3lab.prompts.images` re-exports these names, with the pictures phi3lab ships.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from phi3lab.errors import Phi3LabError

__all__ = ["ImageInputError", "open_image", "to_rgb", "MAX_PIXELS"]

MAX_PIXELS = 64 * 1024 * 1024  # 64 Mpx: far above any useful HD canvas, far below a bomb


class ImageInputError(Phi3LabError, ValueError):
    """An image that cannot be used as it is; the message says why and what to do."""


def open_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file fully, upright (EXIF orientation applied), or raise :class:`ImageInputError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImageInputError(f"no image file at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageInputError(
                        f"{path.name} is {w}×{h} = {w * h / 1e6:.0f} Mpx, over the {max_pixels / 1e6:.0f} Mpx limit "
                        "(a possible decompression bomb); downscale it first, or pass max_pixels= if you trust it"
                    )
                im.load()  # decode now: truncated files fail here rather than deep inside the processor
                image = ImageOps.exif_transpose(im)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"{path.name} was refused as a possible decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{path.name} is not an image PIL can read (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(
            f"{path.name} could not be decoded ({exc}); the file may be truncated or corrupt"
        ) from exc
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageInputError(
            f"an image array must be H×W, H×W×1, H×W×3 or H×W×4 (channels last), got shape {array.shape}"
        )
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and 0 <= array.min() and array.max() <= 1:
            array = (array * 255).round().astype(np.uint8)
        else:
            raise ImageInputError(
                f"an image array must be uint8 (0..255) or float in 0..1, got {array.dtype} "
                f"with values {array.min()}..{array.max()}"
            )
    return Image.fromarray(array)


def to_rgb(image) -> Image.Image:
    """Any supported image input as an 8-bit RGB PIL image (see the module docstring)."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    elif isinstance(image, np.ndarray):
        image = _from_array(image)
    elif hasattr(image, "numpy") and hasattr(image, "dim"):  # a torch tensor, HWC
        image = _from_array(image.detach().cpu().numpy())
    if not isinstance(image, Image.Image):
        raise ImageInputError(f"expected a PIL image, a numpy array or a file path, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ImageInputError(f"an image must be at least 1×1 pixel, got {image.width}×{image.height}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(data.max()), 1.0)
        if image.mode == "F" and data.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(data / top * 255.0, 0, 255).round().astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image
