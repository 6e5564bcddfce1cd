"""Training-time augmentation of the CNNDetection protocol (Wang et al., CVPR 2020), which RINE reuses.

Per image, in CNNDetection's order: resize as at inference, Gaussian blur
(sigma uniform in [0, 3]) with probability 0.5, JPEG re-compression (quality
uniform in 30..100) with probability 0.5, random crop to the input size,
horizontal flip with probability 0.5, then the model's normalisation.
CNNDetection re-compresses with OpenCV or PIL at random; only PIL is used
here (OpenCV is not a dependency).

Every random choice comes from the generator passed in, which the dataset
seeds from (run seed, epoch, image index): an image gets the same
augmentation whatever worker, process or resume it is loaded in.
Evaluation does not use this module: it runs the inference preprocessing
(:func:`specdet.runtime.preprocess.preprocess`) unchanged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

# The resize step of the inference preprocessing, so training sees images at
# the scale inference does. Private in specdet.runtime.preprocess.
from specdet.runtime.preprocess import preprocess, resize_for_crop


@dataclass(frozen=True)
class Augment:
    preprocessing: dict[str, Any]  # the model's: resize, crop, mean, std, interpolation
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)  # inclusive
    flip_prob: float = 0.5

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """An RGB image to a normalised float32 ``[3, crop, crop]`` array."""
        spec, crop = self.preprocessing, self.preprocessing["crop"]
        image = resize_for_crop(image, spec)
        if rng.random() < self.blur_prob:
            image = gaussian_blur(image, rng.uniform(*self.blur_sigma))
        if rng.random() < self.jpeg_prob:
            image = jpeg(image, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
        width, height = image.size
        left, top = int(rng.integers(0, width - crop + 1)), int(rng.integers(0, height - crop + 1))
        image = image.crop((left, top, left + crop, top + crop))
        if rng.random() < self.flip_prob:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # The image is now crop x crop, so with resize off the inference
        # preprocessing only normalises it: the same arithmetic as detect-predict.
        return preprocess(image, {**spec, "resize": None})[0]


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """Exact Gaussian per channel (scipy, as CNNDetection), not PIL's box-blur approximation."""
    pixels = np.asarray(image, dtype=np.float32)
    blurred = np.stack([gaussian_filter(pixels[..., c], sigma) for c in range(pixels.shape[-1])], axis=-1)
    return Image.fromarray(np.clip(np.round(blurred), 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer, formats=("JPEG",)) as decoded:
        return decoded.convert("RGB")
