"""Photo files for tests that need files on disk: the cnndetection thumbnails when ``../shared`` has them
(400 real and generated JPEGs of ten sources), else scikit-image's sample photos written once as JPEG and PNG,
so that these tests also run on a clone without the shared data."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

THUMBS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cnndetection-thumbs"
_written: list[Path] = []


def photo_files() -> list[Path]:
    """Every photo, sorted: the thumbnails, or the sample photos (alternately JPEG and PNG)."""
    if THUMBS.is_dir():
        return sorted(p for p in THUMBS.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    if not _written:
        from specdet.images import sample_photos

        folder = Path(tempfile.mkdtemp(prefix="specdet-photos-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        for i, (name, array) in enumerate(sample_photos()):
            path = folder / f"{name}.{'jpg' if i % 2 == 0 else 'png'}"
            Image.fromarray(np.asarray(array)).convert("RGB").save(path)
            _written.append(path)
    return list(_written)
