"""Where images come from: files and folders on disk, and the sample photos that ship with scikit-image.

Shared by scoring (``detect-predict``), training data, FP16 calibration and
the benchmarks, so that every stage finds the same images in a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from specdet.errors import SpecdetError


def _readable_suffixes() -> frozenset[str]:
    """Raster formats photos come in, as far as this Pillow can open them (AVIF needs Pillow 11.2+, say)."""
    from PIL import Image

    wanted = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp", ".avif",
              ".ico", ".tga", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k"}
    openable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(wanted & openable)


IMAGE_SUFFIXES = _readable_suffixes()


def _open_formats() -> tuple[str, ...]:
    """The Pillow formats of IMAGE_SUFFIXES that Pillow opens (a camera's multi-picture JPEG opens as JPEG)."""
    from PIL import Image

    extensions = Image.registered_extensions()
    return tuple(sorted({extensions[suffix] for suffix in IMAGE_SUFFIXES} & set(Image.OPEN)))


# What Image.open may take a file for. Pillow otherwise opens by content: a file named photo.jpg holding
# PostScript would be opened as EPS, and decoding it runs Ghostscript (`gs` from PATH) on the file.
OPEN_FORMATS = _open_formats()

# scikit-image's bundled photos (no download): colour, grayscale and one RGBA.
SAMPLE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
    "colorwheel", "camera", "coins", "moon", "brick", "grass", "gravel", "page", "logo",
)


def collect_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to the images under them (sorted).

    A path that does not exist is kept, and so is anything in a folder that
    is named like an image but is not a regular file (a FIFO, a broken link):
    scoring reports each as skipped instead of dropping it without a word.
    """
    files = []
    for path in paths:
        if _is_dir(path):
            found = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            files.extend(sorted(found, key=str))
        else:
            files.append(path)
    return files


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, False for a path that cannot be a folder (a NUL byte, a name too long): scoring then
    reports it as one skipped file instead of the whole run failing."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def folder_images(folder: str | Path) -> list[Path]:
    """The images under ``folder`` (sorted); an error if it is not a folder or holds none."""
    root = Path(folder)
    if not root.is_dir():
        raise SpecdetError(f"image folder {root} not found: give a folder of images")
    files = collect_images([root])
    if not files:
        raise SpecdetError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image's sample photos as ``(name, array)``: the built-in default of the demo, calibration and benchmarks."""
    try:
        from skimage import data
    except ImportError as err:
        raise SpecdetError("the built-in photos come from scikit-image: pip install 'specdet[demo]'") from err
    return [(name, getattr(data, name)()) for name in SAMPLE_PHOTOS]
