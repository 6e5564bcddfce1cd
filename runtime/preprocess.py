"""Image loading and preprocessing: one implementation shared by every backend.

The preprocessing dict comes from the checkpoint or the manifest::

    {"resize": 256 | None,        # shorter side resized to this first (None: keep)
     "crop": 224,                 # centre crop, the model's input size
     "mean": [r, g, b], "std": [r, g, b],   # on pixel values scaled to [0, 1]
     "interpolation": "bicubic" | "bilinear"}

Resizing and cropping follow torchvision's ``Resize(int)`` and ``CenterCrop``
on PIL images (same size rounding, same PIL filters), so a model trained
with those transforms sees the same pixels here. Unlike ``CenterCrop``, an
image smaller than the crop is scaled up rather than padded with black,
unless the spec says ``"pad_small": true`` (the published detectors, whose
reference evaluation runs ``CenterCrop`` alone): then it is padded with black
exactly as ``CenterCrop`` pads it.
Work per image is bounded: an image above ``max_pixels`` (default
:data:`MAX_PIXELS`) is refused before it is decoded, and so is one whose
resized size would be (a 3 x 100000 strip scaled to a 224-pixel short side
is 1.7 gigapixels); only regular files are opened (a FIFO named ``x.jpg``
would block forever). Resampling only the cropped region (Pillow's ``box``)
would bound the work too, but Pillow takes the box in float32 and the pixels
then differ by a few levels from the full resize that training used.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageMode, UnidentifiedImageError

from specdet.errors import SpecdetError
from specdet.images import OPEN_FORMATS
from specdet.limits import MAX_IMAGE_BYTES, MAX_PIXELS
from specdet.manifest import INTERPOLATIONS, preprocessing_problems

ImageSource = str | os.PathLike | Image.Image | np.ndarray | bytes

# Pillow logs some decoder errors (a TIFF claiming 59139 samples per pixel)
# before raising them; with logging not configured Python prints those on
# stderr, a second, stray line beside the "skipped" line the error becomes.
# A NullHandler keeps them off stderr; an application that configures logging
# still gets them through propagation.
logging.getLogger("PIL").addHandler(logging.NullHandler())
# Pillow warns about images above its pixel threshold, which --max-pixels may raise specdet's limit past
# (up to MAX_PIXELS_CEILING, where Pillow's own error takes over): the limits here decide, so the warning
# is only two stray lines on stderr beside the result or the "skipped" line.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# The manifest's interpolation names are PIL's filter names, lower case.
_FILTERS = {name: Image.Resampling[name.upper()] for name in INTERPOLATIONS}

# Transparent pixels are composited over white, as image viewers and web
# pages show them; dropping alpha instead would expose whatever colour the
# encoder left under fully transparent pixels, often black or noise.
_BACKGROUND = (255, 255, 255)

# Each EXIF orientation but 1 and the transposition that shows the image upright: ImageOps.exif_transpose's table.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Modes whose pixels are wider than 8 bits, with the value that maps to white.
# PNG 16-bit grayscale opens as one of the "I" modes; PIL's own convert("RGB")
# clips it at 255 instead of scaling.
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
# Modes with an alpha band, composited over _BACKGROUND.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Pixels per block of the wide-mode conversion: 8 MB of float64 at a time.
_BLOCK_PIXELS = 1 << 20


class ImageError(SpecdetError):
    """An input that is not a readable image; the message is ``"SOURCE: reason"``."""

    def __init__(self, source: object, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Return ``source`` (a path, an encoded file's bytes, a PIL image or an HxW / HxWx3 / HxWx4 array) as an RGB PIL image.

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images
    are converted to 8-bit RGB; transparency is composited over white.
    Arrays are uint8, uint16, or float with values in [0, 1]. An image of
    more than ``max_pixels`` pixels is refused (:class:`ImageError`). Of a
    multi-frame image (animated GIF, WebP or PNG; multi-page TIFF) the first
    frame is returned; :func:`image_pixels` also says how many there are.
    """
    return _load(source, max_pixels)[0]


def _load(source: ImageSource, max_pixels: int) -> tuple[Image.Image, int]:
    """``(RGB image of the first frame, number of frames)``."""
    if isinstance(source, np.ndarray):
        _check_pixels(f"array of shape {source.shape}", source.shape[1::-1] if source.ndim >= 2 else (0, 0), max_pixels)
        return _to_rgb(_from_array(source)), 1
    if isinstance(source, Image.Image):
        _check_pixels(source, source.size, max_pixels)
        upright = _upright(source)
        return _to_rgb(source.copy() if upright is source else upright), getattr(source, "n_frames", 1)
    if isinstance(source, (bytes, bytearray, memoryview)):
        # An encoded file received over a network (the Triton models): decoded as the file on disk would be.
        return _decode(io.BytesIO(source), f"encoded image of {len(source)} bytes", max_pixels)
    path = Path(source)
    _check_regular_file(path)
    return _decode(path, path, max_pixels)


def _decode(file: Path | io.BytesIO, name: object, max_pixels: int) -> tuple[Image.Image, int]:
    """Open, check and decode an encoded image; ``name`` names it in errors."""
    try:
        with Image.open(file, formats=OPEN_FORMATS) as image:
            _check_pixels(name, image.size, max_pixels)  # from the header, before decoding
            _check_memory(name, image)
            # Counted before decoding: counting seeks through the frames and back to the first.
            frames = getattr(image, "n_frames", 1)
            image.load()  # decode now, so a truncated file fails here and not later
            upright = _upright(image)
            if upright is not image:
                image.close()  # the stored pixels, freed before the conversion to RGB
            return _to_rgb(upright), frames
    except FileNotFoundError as err:
        raise ImageError(name, "no such file") from err
    except IsADirectoryError as err:
        raise ImageError(name, "a folder, not an image") from err
    except UnidentifiedImageError as err:
        raise ImageError(name, "not an image file PIL can read") from err
    except Image.DecompressionBombError as err:
        raise ImageError(name, f"refused by Pillow as a decompression bomb ({err})") from err
    except MemoryError as err:
        raise ImageError(name, "not enough memory to decode it") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        # PIL reports corrupt and truncated data with these types.
        raise ImageError(name, f"unreadable image ({' '.join(str(err).split())})") from err


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 to 8) as ImageOps.exif_transpose reads it, the XMP's where the EXIF has
    none; 1 when it has none or another value."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return int(orientation) if orientation in _UPRIGHT else 1


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (itself when upright already): ImageOps.exif_transpose's
    pixels, without its rewriting of the EXIF block, which raises struct.error on a tag whose value does not fit
    its type (a damaged file's) and would end the run with a traceback."""
    method = _UPRIGHT.get(exif_orientation(image))
    return image if method is None else image.transpose(method)


def _check_regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        kind = "a broken link" if path.is_symlink() else "no such file"
        raise ImageError(path, kind) from None
    except OSError as err:
        raise ImageError(path, f"cannot read it ({err.strerror})") from err
    except ValueError:  # os.stat refuses a path with a NUL byte
        raise ImageError(path, "the path holds a NUL byte: no file can have that name") from None
    if stat.S_ISDIR(mode):
        raise ImageError(path, "a folder, not an image")
    if not stat.S_ISREG(mode):
        raise ImageError(path, "not a regular file (a FIFO, socket or device): only files are read")


def _check_pixels(source: object, size: tuple[int, int], max_pixels: int, what: str = "") -> None:
    width, height = int(size[0]), int(size[1])
    if width * height > max_pixels:
        raise ImageError(source, f"{what + ' ' if what else ''}{width} x {height} is {width * height / 1e6:.1f} megapixels, "
                                 f"above the limit of {max_pixels / 1e6:.1f}: raise max_pixels (--max-pixels) if it is a real image")


def decode_bytes(mode: str, size: tuple[int, int]) -> int:
    """The memory decoding an image of ``mode`` and ``size`` and converting it to RGB takes at its peak.

    Pillow keeps a pixel of several bands in 4 bytes and one band at its own width; the RGB result takes
    4 more; wide modes (16-bit, 32-bit, float) add a copy at their width and two 8-bit planes
    (:func:`_to_rgb`), and modes that may be transparent the RGBA, background and composite images.
    """
    info = ImageMode.getmode(mode)
    stored = 4 if len(info.bands) > 1 else np.dtype(info.typestr).itemsize
    extra = stored + 2 if mode in _WIDE_MODES else 12 if mode in _ALPHA_MODES or mode == "P" else 0
    return size[0] * size[1] * (stored + 4 + extra)


def _check_memory(source: object, image: Image.Image) -> None:
    """Refuse, from the header, an image whose decoding would take more than MAX_IMAGE_BYTES (a 16-bit
    13000 x 13000 PNG is under the pixel limit raised to its ceiling, but not under this)."""
    needed = decode_bytes(image.mode, image.size)
    if needed > MAX_IMAGE_BYTES:
        raise ImageError(source, f"{image.width} x {image.height} {image.mode} needs {needed / 2**30:.1f} GiB to "
                                 f"decode, above the limit of {MAX_IMAGE_BYTES / 2**30:.1f} GiB per image: "
                                 "downscale it or save it with 8 bits per channel")


def preprocess(images: ImageSource | Sequence[ImageSource], spec: dict[str, Any], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load, resize, centre-crop and normalise images into a float32 ``[N, 3, crop, crop]`` batch."""
    check_spec(spec)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, bytes)):
        images = [images]
    crops = np.empty((len(images), spec["crop"], spec["crop"], 3), dtype=np.uint8)
    for i, source in enumerate(images):
        crops[i] = image_crop(source, spec, max_pixels)[0]
    return normalise(crops, spec)


def image_pixels(source: ImageSource, spec: dict[str, Any], max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int]:
    """One image's normalised ``[3, crop, crop]`` float32 pixels, and its number of frames (the first is scored)."""
    crop, frames = image_crop(source, spec, max_pixels)
    return normalise(crop[None], spec)[0], frames


def image_crop(source: ImageSource, spec: dict[str, Any], max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int]:
    """One image resized and centre-cropped: ``[crop, crop, 3]`` uint8 RGB, and its number of frames.

    Everything but the normalisation, so that the input pipeline's workers
    (:mod:`specdet.runtime.pipeline`) hand over a quarter of the bytes and the
    normalisation can run where the model does.
    """
    image, frames = decoded(source, spec, max_pixels)
    return crop_pixels(image, spec), frames


def decoded(source: ImageSource, spec: dict[str, Any], max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, int]:
    """The RGB image a crop is cut from and its number of frames, refused above ``max_pixels`` as stored or resized."""
    check_spec(spec)
    image, frames = _load(source, max_pixels)
    _check_pixels(source, resized_size(image.size, spec), max_pixels, "resized to")
    return image, frames


def crop_pixels(image: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """An RGB image (:func:`decoded`) resized and centre-cropped with Pillow: ``[crop, crop, 3]`` uint8."""
    return np.asarray(_resize_and_crop(image, spec), dtype=np.uint8)


def normalise(crops: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """uint8 ``[N, crop, crop, 3]`` crops to the model's float32 ``[N, 3, crop, crop]`` input: ``(x / 255 - mean) / std``.

    The one definition of the arithmetic (:func:`normalise_table`); a runner
    that normalises on its device (:meth:`specdet.runtime.base.Runner.infer_crops`)
    must give the same float32 values, operation for operation. Each output is
    looked up in the table of its channel's 256 values rather than computed:
    the same values (every operation is correctly rounded, in the table as over
    the array), in about a third of the time, which a CPU backend's scoring
    thread spends on every image.
    """
    table = normalise_table(tuple(spec["mean"]), tuple(spec["std"]))
    out = np.empty((crops.shape[0], 3, *crops.shape[1:3]), dtype=np.float32)
    for channel in range(3):
        out[:, channel] = table[channel][crops[..., channel]]
    return out


@functools.lru_cache(maxsize=16)
def normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``(x / 255 - mean) / std`` in float32 for every uint8 ``x``, per channel: ``[3, 256]``."""
    values = np.arange(256, dtype=np.float32)[None, :]
    mean_f32 = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    std_f32 = np.asarray(std, dtype=np.float32).reshape(3, 1)
    table = (values / np.float32(255.0) - mean_f32) / std_f32
    table.flags.writeable = False  # shared by every call (lru_cache)
    return table


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
        image = _to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """A wide-mode image (``_WIDE_MODES``) scaled to 8-bit ``L``: ``round(value * 255 / white)``, clipped.

    Row blocks of about ``_BLOCK_PIXELS`` go through float64 at a time, so the work memory is one copy at the
    stored width and one byte per pixel (whole-image float64 temporaries took 25 bytes per pixel).
    """
    pixels = np.asarray(image)
    out = np.empty(pixels.shape, np.uint8)
    scale = 255.0 / _WIDE_MODES[image.mode]
    rows = max(1, _BLOCK_PIXELS // max(1, pixels.shape[1]))
    for top in range(0, pixels.shape[0], rows):
        block = pixels[top : top + rows].astype(np.float64) * scale
        out[top : top + rows] = np.clip(np.round(block), 0, 255)
    return Image.fromarray(out)


def resize_for_crop(image: Image.Image, spec: dict[str, Any]) -> Image.Image:
    """The resize step of ``spec``: the shorter side goes to ``resize`` when set, and never below ``crop``.

    Training augmentation calls this too, so that it sees images at the scale inference does.
    """
    size = resized_size(image.size, spec)
    return image if size == image.size else image.resize(size, _FILTERS[spec["interpolation"]])


def resized_size(size: tuple[int, int], spec: dict[str, Any]) -> tuple[int, int]:
    width, height = size
    short, long = min(width, height), max(width, height)
    # A missing "resize" means no resize, as null does (preprocessing_problems accepts both);
    # a short side below the crop is scaled up to it unless the crop pads it instead.
    target = spec.get("resize") or short
    if not spec.get("pad_small"):
        target = max(target, spec["crop"])
    if short == target:
        return size
    # torchvision's Resize(int): the longer side is truncated, not rounded.
    new_long = int(target * long / short)
    return (target, new_long) if width <= height else (new_long, target)


def _resize_and_crop(image: Image.Image, spec: dict[str, Any]) -> Image.Image:
    crop = spec["crop"]
    image = _pad_to(resize_for_crop(image, spec), crop)
    left, top = crop_origin(image.size, crop)
    return image.crop((left, top, left + crop, top + crop))


def _pad_to(image: Image.Image, crop: int) -> Image.Image:
    """``image`` padded with black to at least ``crop`` on each side, as torchvision's CenterCrop pads it.

    The odd pixel goes right and bottom (``(crop - w) // 2`` on the left); a
    plain ``Image.crop`` beyond the edges would pad too, but rounds the
    half the other way.
    """
    width, height = image.size
    if width >= crop and height >= crop:
        return image
    padded = Image.new("RGB", (max(width, crop), max(height, crop)))
    padded.paste(image, (max(crop - width, 0) // 2, max(crop - height, 0) // 2))
    return padded


def crop_origin(size: tuple[int, int], crop: int) -> tuple[int, int]:
    """The ``(left, top)`` corner of the centre crop of an image of ``size``: torchvision's CenterCrop rounding,
    so both pick the same pixels."""
    width, height = size
    return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
