"""specdet.runtime.preprocess: every image kind to RGB, resize/crop/normalise, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_PREPROCESSING
from specdet.errors import SpecdetError
from specdet.runtime.preprocess import ImageError, load_image, preprocess

SPEC = dict(TINY_PREPROCESSING)


def _colour(image: Image.Image, xy=(0, 0)) -> np.ndarray:
    return np.asarray(image, dtype=int)[xy[1], xy[0]]


def test_rgb_png(image_dir):
    image = load_image(image_dir / "good" / "astronaut.png")
    assert image.mode == "RGB" and image.size == (128, 128)


def test_grayscale_becomes_three_equal_channels(image_dir):
    pixels = np.asarray(load_image(image_dir / "good" / "camera.png"))
    assert pixels.shape == (128, 128, 3)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_palette_transparency_composited_over_white(image_dir):
    image = load_image(image_dir / "good" / "palette.gif")
    assert image.mode == "RGB"
    assert list(_colour(image, (0, 0))) == [255, 255, 255]
    assert list(_colour(image, (40, 0))) == [255, 0, 0]


def test_rgba_half_transparent_red_over_white(image_dir):
    r, g, b = _colour(load_image(image_dir / "good" / "rgba.png"))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_cmyk_to_rgb(image_dir):
    r, g, b = _colour(load_image(image_dir / "good" / "cmyk.jpg"), (24, 24))
    assert r > 240 and g < 15 and b < 15


def test_sixteen_bit_is_scaled_not_clipped(image_dir):
    deep = Image.open(image_dir / "good" / "deep.png")
    assert deep.mode.startswith("I")
    assert list(_colour(load_image(deep))) == [255, 255, 255]
    half = Image.fromarray(np.full((4, 4), 32896, np.uint16))
    assert list(_colour(load_image(half))) == [128, 128, 128]


def test_exif_rotation_90(image_dir):
    image = load_image(image_dir / "good" / "rotated.jpg")
    # Stored 40x20 with red on the left; turned clockwise, red is on top.
    assert image.size == (20, 40)
    top, bottom = _colour(image, (10, 5)), _colour(image, (10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((8, 8), 200, np.uint8), [200, 200, 200]),
        (np.full((8, 8, 3), 0.5, np.float32), [128, 128, 128]),
        (np.dstack([np.full((8, 8, 3), 9, np.uint8), np.full((8, 8), 255, np.uint8)]), [9, 9, 9]),
        (np.full((8, 8, 3), 65535, np.uint16), [255, 255, 255]),
    ],
    ids=["gray-uint8", "rgb-float", "rgba-uint8", "rgb-uint16"],
)
def test_numpy_inputs(array, expected):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (8, 8)
    assert list(_colour(image)) == expected


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((3, 8, 8), np.uint8), "channels last"),
        (np.full((8, 8, 3), 2.0), r"outside \[0, 1\]"),
        (np.zeros((8, 8, 3), np.int64), "dtype int64"),
    ],
)
def test_bad_arrays(array, message):
    with pytest.raises(ImageError, match=message):
        load_image(array)


def test_corrupt_files_name_the_file(image_dir):
    for name in ("truncated.jpg", "text.png"):
        path = image_dir / "bad" / name
        with pytest.raises(ImageError, match=name) as err:
            load_image(path)
        assert isinstance(err.value, SpecdetError) and err.value.source == path
    with pytest.raises(ImageError, match="no such file"):
        load_image(image_dir / "absent.png")


def test_normalisation_against_hand_computation():
    pixels = np.zeros((50, 60, 3), np.uint8)
    pixels[...] = (255, 0, 51)
    batch = preprocess(pixels, SPEC)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(batch[0, channel], value, rtol=1e-6)


def test_small_image_is_scaled_up_to_the_crop():
    batch = preprocess(np.full((10, 20, 3), 0.25, np.float32), {**SPEC, "resize": None})
    assert batch.shape == (1, 3, 32, 32)
    batch = preprocess(np.zeros((10, 20, 3), np.uint8), {**SPEC, "resize": 16})
    assert batch.shape == (1, 3, 32, 32)


def test_matches_torchvision_resize_and_centre_crop(image_dir):
    T = pytest.importorskip("torchvision.transforms")

    spec = {**SPEC, "resize": 37, "crop": 29}
    reference = T.Compose(
        [
            T.Resize(37, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(29),
            T.ToTensor(),
            T.Normalize(spec["mean"], spec["std"]),
        ]
    )
    image = load_image(image_dir / "good" / "coffee.jpg")  # 150x100: not square
    np.testing.assert_allclose(preprocess(image, spec)[0], reference(image).numpy(), atol=1e-6)


def test_batch_of_mixed_sources(image_dir):
    good = image_dir / "good"
    sources = [good / "coffee.jpg", str(good / "camera.png"), np.zeros((40, 40, 3), np.uint8)]
    assert preprocess(sources, SPEC).shape == (3, 3, 32, 32)


@pytest.mark.parametrize(
    "change, message",
    [({"crop": 0}, "crop"), ({"std": [1, 0, 1]}, "std must not be 0"), ({"interpolation": "lanczos"}, "interpolation")],
)
def test_invalid_spec(change, message):
    with pytest.raises(SpecdetError, match=message):
        preprocess(np.zeros((40, 40, 3), np.uint8), {**SPEC, **change})


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize("as_bytes", [False, True])
def test_postscript_under_an_image_name_never_runs_ghostscript(tmp_path, monkeypatch, as_bytes):
    """Pillow opens files by content: PostScript named .jpg would be decoded by running `gs` from PATH. Only the
    formats of IMAGE_SUFFIXES are opened (specdet.images.OPEN_FORMATS), from a file or from bytes (a server)."""
    from specdet.runtime.preprocess import ImageError, image_pixels

    marker = tmp_path / "gs-ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(EPS)
    spec = {"resize": None, "crop": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    with pytest.raises(ImageError, match="not an image file"):
        image_pixels(EPS if as_bytes else photo, spec)
    assert not marker.exists()
