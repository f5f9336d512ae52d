"""Image inputs: modes, arrays, files, EXIF, corrupt files, bombs, and the processor's num_crops."""

import io

import numpy as np
import pytest
from PIL import Image

from phi3lab.models.phi3_v import Phi3VImageProcessor
from phi3lab.paths import data_dir
from phi3lab.prompts.images import ImageInputError, open_image, to_rgb


@pytest.fixture(scope="module")
def proc():
    return Phi3VImageProcessor(num_crops=4)


def rgb_pixels(image):
    return np.asarray(to_rgb(image))


@pytest.mark.parametrize("mode", ["P", "L", "LA", "RGBA", "CMYK", "YCbCr", "1"])
def test_modes_become_rgb_as_pil_converts_them(mode):
    src = Image.fromarray((np.random.RandomState(0).rand(20, 30, 3) * 255).astype("uint8")).convert(mode)
    out = to_rgb(src)
    assert out.mode == "RGB" and out.size == (30, 20)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(src.convert("RGB")))  # the official rule


def test_rgba_drops_alpha_like_the_official_processor():
    src = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert tuple(rgb_pixels(src)[0, 0]) == (10, 20, 30)


def test_16_bit_grayscale_is_scaled_not_clipped():
    data = np.array([[0, 32768, 65535]], dtype=np.uint16)
    src = Image.fromarray(data)
    assert src.mode == "I;16"
    assert rgb_pixels(src)[0, :, 0].tolist() == [0, 128, 255]
    assert src.convert("RGB").getpixel((1, 0)) == (255, 255, 255)  # what plain PIL would have done


def test_float_grayscale_in_unit_range():
    src = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert rgb_pixels(src)[0, :, 0].tolist() == [0, 128, 255]


def test_arrays_are_accepted():
    assert to_rgb(np.zeros((5, 7, 3), np.uint8)).size == (7, 5)
    assert to_rgb(np.ones((5, 7), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(np.zeros((5, 7, 1), np.uint8)).mode == "RGB"


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((5, 7, 2), np.uint8), "H×W, H×W×1, H×W×3 or H×W×4"),
        (np.full((5, 7, 3), 300, np.int32), "must be uint8"),
        (np.zeros((2, 5, 7, 3), np.uint8), "H×W, H×W×1"),
    ],
)
def test_bad_arrays(array, match):
    with pytest.raises(ImageInputError, match=match):
        to_rgb(array)


def test_wrong_type():
    with pytest.raises(ImageInputError, match="expected a PIL image"):
        to_rgb(42)


def test_exif_rotation_is_applied_to_files(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (20, 40)


def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageInputError, match="junk.png is not an image PIL can read"):
        open_image(tmp_path / "junk.png")
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(1).rand(64, 64, 3) * 255).astype("uint8")).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageInputError, match="cut.png could not be decoded"):
        open_image(tmp_path / "cut.png")
    with pytest.raises(ImageInputError, match="no image file"):
        open_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("1", (9000, 9000)).save(tmp_path / "big.png")  # 81 Mpx, a few KB on disk
    with pytest.raises(ImageInputError, match="81 Mpx, over the 67 Mpx limit"):
        open_image(tmp_path / "big.png")
    assert open_image(tmp_path / "big.png", max_pixels=10**8).size == (9000, 9000)


def test_one_pixel_and_extreme_ratio(proc):
    out = proc(Image.new("RGB", (1, 1), (0, 0, 0)))
    assert out["image_sizes"].tolist() == [[672, 672]] and out["num_img_tokens"] == [757]
    with pytest.raises(ValueError, match="too elongated for num_crops=4"):
        proc(Image.new("RGB", (20000, 1)))


def test_num_crops_per_call(proc):
    img = Image.new("RGB", (1920, 1080))
    assert proc(img)["num_img_tokens"] == [757] and proc(img)["pixel_values"].shape[1] == 5
    out = proc(img, num_crops=16)
    assert out["num_img_tokens"] == [2353] and tuple(out["pixel_values"].shape) == (1, 17, 3, 336, 336)
    assert proc.calc_num_image_tokens(1920, 1080, 16) == 2353


def test_white_padding_and_zero_slots(proc):
    out = proc(Image.new("RGB", (1300, 867), (0, 0, 0)), num_crops=16)  # resized to 1344×896, padded to 1008
    pixels = out["pixel_values"][0]
    assert out["image_sizes"].tolist() == [[1008, 1344]]
    white = [(1 - m) / s for m, s in zip(proc.image_mean, proc.image_std)]
    np.testing.assert_allclose(pixels[1, :, 0, 0].numpy(), white, atol=1e-4)  # first crop's top row is padding
    assert float(pixels[13:].abs().max()) == 0.0  # slots 13-16 are empty


# --- the shipped sample pictures ----------------------------------------------------------------------


def test_sample_image_opens_a_shipped_picture():
    from phi3lab import sample_image
    from phi3lab.prompts.images import sample_image_names

    assert sample_image_names() == ["chart.png", "scene.jpg", "shapes.png", "word.png"]
    image = sample_image()
    assert image.mode == "RGB" and image.size == (332, 368)
    shipped = open_image(data_dir() / "images" / "chart.png")
    np.testing.assert_array_equal(np.asarray(sample_image("chart.png")), np.asarray(shipped))


def test_an_unknown_sample_image_lists_the_shipped_ones():
    from phi3lab import sample_image

    with pytest.raises(
        ImageInputError,
        match=r"no sample image named 'shape.png'; the shipped ones are 'chart.png', "
        r"'scene.jpg', 'shapes.png', 'word.png'.*open_image\(path\)",
    ):
        sample_image("shape.png")


def test_sample_images_follow_the_data_folder(monkeypatch, tmp_path):
    from phi3lab import sample_image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (7, 5), "red").save(tmp_path / "images" / "mine.png")
    monkeypatch.setenv("PHI3LAB_DATA", str(tmp_path))
    assert sample_image("mine.png").size == (7, 5)
    with pytest.raises(ImageInputError, match="the shipped ones are 'mine.png'"):
        sample_image()


def test_data_dir_prefers_an_installed_copy_then_the_checkout(monkeypatch, tmp_path):
    from phi3lab import paths

    monkeypatch.delenv("PHI3LAB_DATA", raising=False)
    assert paths.data_dir() == paths.ROOT / "data"  # a checkout: phi3lab/_data does not exist
    (tmp_path / "_data").mkdir()
    monkeypatch.setattr(paths, "PACKAGE", tmp_path)  # as in a wheel: phi3lab/_data beside the modules
    assert paths.data_dir() == tmp_path / "_data" and paths.embedded_dir() == tmp_path / "_data" / "models"
    monkeypatch.setenv("PHI3LAB_DATA", str(tmp_path / "elsewhere"))
    assert paths.data_dir() == tmp_path / "elsewhere"
