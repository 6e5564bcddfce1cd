"""Image loading and preprocessing: one implementation shared by every backend.

The preprocessing dict comes from the checkpoint or the manifest::

    {"resize": 256 | None,        # shorter side resized to this first (None: keep)
     "crop": 224,                 # centre crop, the model's input size
     "mean": [r, g, b], "std": [r, g, b],   # on pixel values scaled to [0, 1]
     "interpolation": "bicubic" | "bilinear"}

Resizing and cropping follow torchvision's ``Resize(int)`` and ``CenterCrop``
on PIL images (same size rounding, same PIL filters), so a model trained
with those transforms sees the same pixels here. Unlike ``CenterCrop``, an
image smaller than the crop is scaled up rather than padded with black.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from specdet.errors import SpecdetError
from specdet.manifest import INTERPOLATIONS, preprocessing_problems

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

# The manifest's interpolation names are PIL's filter names, lower case.
_FILTERS = {name: Image.Resampling[name.upper()] for name in INTERPOLATIONS}

# Transparent pixels are composited over white, as image viewers and web
# pages show them; dropping alpha instead would expose whatever colour the
# encoder left under fully transparent pixels, often black or noise.
_BACKGROUND = (255, 255, 255)

# Modes whose pixels are wider than 8 bits, with the value that maps to white.
# PNG 16-bit grayscale opens as one of the "I" modes; PIL's own convert("RGB")
# clips it at 255 instead of scaling.
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


class ImageError(SpecdetError):
    """An input that is not a readable image; the message is ``"SOURCE: reason"``."""

    def __init__(self, source: object, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def load_image(source: ImageSource) -> Image.Image:
    """Return ``source`` (a path, a PIL image or an HxW / HxWx3 / HxWx4 array) as an RGB PIL image.

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images
    are converted to 8-bit RGB; transparency is composited over white.
    Arrays are uint8, uint16, or float with values in [0, 1].
    """
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source))
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    path = Path(source)
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            return _to_rgb(ImageOps.exif_transpose(image))
    except FileNotFoundError as err:
        raise ImageError(path, "no such file") from err
    except IsADirectoryError as err:
        raise ImageError(path, "a folder, not an image") from err
    except UnidentifiedImageError as err:
        raise ImageError(path, "not an image file PIL can read") from err
    except (OSError, ValueError, SyntaxError) as err:
        # PIL reports corrupt and truncated data with these types.
        raise ImageError(path, f"unreadable image ({err})") from err


def preprocess(images: ImageSource | Sequence[ImageSource], spec: dict[str, Any]) -> np.ndarray:
    """Load, resize, centre-crop and normalise images into a float32 ``[N, 3, crop, crop]`` batch."""
    check_spec(spec)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
    batch = np.empty((len(images), 3, spec["crop"], spec["crop"]), dtype=np.float32)
    for i, source in enumerate(images):
        pixels = np.asarray(_resize_and_crop(load_image(source), spec), dtype=np.float32)
        batch[i] = (pixels.transpose(2, 0, 1) / 255.0 - mean) / std
    return batch


def check_spec(spec: Any) -> None:
    """Raise :class:`SpecdetError` unless ``spec`` is a valid preprocessing dict (the manifest's rules)."""
    problems = preprocessing_problems(spec)
    if problems:
        raise SpecdetError(f"invalid preprocessing ({'; '.join(problems)}): re-export or re-save the model")


def _from_array(array: np.ndarray) -> Image.Image:
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(
            f"array of shape {array.shape}", "not an image: expected HxW, HxWx3 or HxWx4 (channels last)"
        )
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.nanmin(array) >= 0.0 and np.nanmax(array) <= 1.0):
            raise ImageError("float image array", "values outside [0, 1]: scale it to [0, 1] or pass uint8")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"image array of dtype {array.dtype}", "not supported: pass uint8, uint16 or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_MODES:
        scaled = np.asarray(image, dtype=np.float64) * (255.0 / _WIDE_MODES[image.mode])
        image = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resize_for_crop(image: Image.Image, spec: dict[str, Any]) -> Image.Image:
    """The resize step of ``spec``: the shorter side goes to ``resize`` when set, and never below ``crop``.

    Training augmentation calls this too, so that it sees images at the scale inference does.
    """
    target = max(spec["resize"] or min(image.size), spec["crop"])
    return _resize_shorter_side(image, target, _FILTERS[spec["interpolation"]])


def _resize_and_crop(image: Image.Image, spec: dict[str, Any]) -> Image.Image:
    crop = spec["crop"]
    image = resize_for_crop(image, spec)
    width, height = image.size
    # torchvision's CenterCrop rounding, so both pick the same pixels.
    left, top = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def _resize_shorter_side(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short == size:
        return image
    # torchvision's Resize(int): the longer side is truncated, not rounded.
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, resample)
