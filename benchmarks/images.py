"""The images a benchmark scores: a folder (labelled when laid out as ``0_real/1_fake``) or built-in photos.

Labelled layouts are the training code's (``specdet.train.data.discover``:
``DIR/0_real`` + ``DIR/1_fake``, or one such pair per source, as in
CNNDetection); any other folder is scored unlabelled. Without a folder the
benchmark uses scikit-image's sample photos (``specdet.demo``), which need
nothing outside the installed packages.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from specdet.errors import SpecdetError
from specdet.runtime.preprocess import ImageError, ImageSource, preprocess


@dataclasses.dataclass
class ImageSet:
    description: str
    names: list[str]
    items: list[ImageSource]  # paths, or arrays for the built-in photos
    labels: list[int] | None = None  # 0 real, 1 fake; None: unlabelled
    sources: list[str] | None = None  # per image, for per-source AUC and AP
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # unreadable files

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def summary(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        if self.labelled:
            for source, label in zip(self.sources, self.labels):
                entry = counts.setdefault(source, {"real": 0, "fake": 0})
                entry["fake" if label else "real"] += 1
        return {
            "description": self.description,
            "count": len(self),
            "labelled": self.labelled,
            "sources": counts,
            "skipped": self.skipped,
        }


def builtin() -> ImageSet:
    from specdet.images import sample_photos

    photos = sample_photos()
    return ImageSet(
        f"{len(photos)} scikit-image sample photos (unlabelled)",
        [name for name, _ in photos],
        [array for _, array in photos],
    )


def from_folder(root: str | os.PathLike, max_images: int | None = None) -> ImageSet:
    """The images under ``root``, labelled when its layout says so; at most ``max_images``, spread over it."""
    from specdet.images import collect_images
    from specdet.train.data import discover

    root = Path(root)
    if not root.is_dir():
        raise SpecdetError(f"image folder {root} not found: pass --images a folder of images")
    try:
        samples = discover(root)
    except SpecdetError:
        samples = None
    if samples:
        picked = _spread(samples, max_images)
        return ImageSet(
            f"{len(picked)} labelled images from {root}",
            [str(Path(s.path).relative_to(root)) for s in picked],
            [s.path for s in picked],
            [s.label for s in picked],
            [s.source for s in picked],
        )
    files = _spread(collect_images([root]), max_images)
    if not files:
        raise SpecdetError(f"no images in {root}: pass --images a folder of images")
    return ImageSet(f"{len(files)} unlabelled images from {root}", [str(f.relative_to(root)) for f in files], files)


def _spread(items: list, count: int | None) -> list:
    """``count`` items spread evenly over ``items`` (sorted by path, so over every source and class)."""
    if count is None or count >= len(items):
        return list(items)
    if count < 1:
        raise SpecdetError(f"--max-images {count}: give 1 or more")
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count)]


def preprocess_set(images: ImageSet, spec: dict[str, Any]) -> tuple[ImageSet, np.ndarray]:
    """The readable images and their preprocessed batch; unreadable ones are recorded as skipped."""
    keep, pixels, skipped = [], [], list(images.skipped)
    for i, item in enumerate(images.items):
        try:
            pixels.append(preprocess(item, spec))
            keep.append(i)
        except ImageError as err:
            skipped.append({"image": images.names[i], "reason": err.reason})
    if not keep:
        raise SpecdetError(f"none of the {len(images)} images could be read: {skipped[0]['reason']}")

    def pick(values):
        return None if values is None else [values[i] for i in keep]

    readable = ImageSet(images.description, pick(images.names), pick(images.items), pick(images.labels),
                        pick(images.sources), skipped)
    return readable, np.concatenate(pixels)
