"""The hostile-image corpus the input paths are checked on (pipeline workers, device decoding), and what the serial
Pillow path makes of it: the reference every other path must give byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from specdet.runtime.preprocess import ImageError, image_crop


def make(image_dir: Path, extra: Path) -> list[str]:
    """The corpus: ``image_dir``'s good and bad images (EXIF orientation, CMYK, 16-bit, palette, alpha,
    grayscale, corrupt; conftest's ``image_dir``), plus tiny, photo-size, multi-frame and unreadable entries
    written to ``extra``, in an order that mixes good and bad."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1, 1, 3), np.uint8)).save(extra / "tiny.png")
    Image.fromarray(rng.integers(0, 256, (1100, 1500, 3), np.uint8)).save(extra / "photo.jpg", quality=85)
    Image.fromarray(rng.integers(0, 256, (3, 30000), np.uint8)).save(extra / "strip.png")  # too large once resized
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue")]
    frames[0].save(extra / "animated.gif", save_all=True, append_images=frames[1:])
    (extra / "folder.jpg").mkdir()
    os.mkfifo(extra / "fifo.jpg")
    good = sorted(str(p) for p in (image_dir / "good").rglob("*") if p.is_file() and p.suffix != ".txt")
    bad = sorted(str(p) for p in (image_dir / "bad").iterdir())
    odd = [str(extra / n) for n in ("tiny.png", "photo.jpg", "strip.png", "animated.gif", "folder.jpg", "fifo.jpg")]
    odd.append(str(extra / "missing.jpg"))
    return [p for trio in zip(good, bad + odd, good[::-1]) for p in trio] + good + odd


def serial_reads(paths: list[str], spec: dict, max_pixels: int = 64_000_000) -> list[tuple[str | None, bytes | None, int]]:
    """Each file as the serial path reads it: ``(error, crop bytes, frames)``."""
    out = []
    for path in paths:
        try:
            crop, frames = image_crop(path, spec, max_pixels)
        except ImageError as err:
            out.append((err.reason, None, 1))
        else:
            out.append((None, crop.tobytes(), frames))
    return out
