"""Pillow's resize + centre crop in torch (runtime/resample.py): byte-identical to Pillow on random sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from specdet.runtime import resample
from specdet.runtime.preprocess import image_crop


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Noise on a gradient: every level and sharp edges, where rounding and clipping show."""
    ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1.0, height)[:, None, None]
    noise = rng.integers(-90, 90, (height, width, 3))
    return Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))


def _sizes(count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 900, (count, 2))]
    # The edges: the resize target on one side, the crop size, 1-pixel sides, strips, upscaling, tall
    # images whose height shrinks more than twice the width (Pillow 13's vertical-first order).
    return sizes + [(256, 256), (256, 900), (900, 256), (224, 224), (224, 300), (1, 1), (1, 700), (700, 1), (2, 3),
                    (257, 255), (10000, 300), (300, 1000), (512, 1038), (400, 1300), (240, 3000)]


def _crop(image: Image.Image, spec: dict) -> np.ndarray:
    plan = resample.plan(image.size, spec)
    pixels = np.array(image)[plan.rows[0]:plan.rows[1], plan.cols[0]:plan.cols[1]]
    assert pixels.shape == plan.shape
    return resample.resize_crop(torch.from_numpy(np.ascontiguousarray(pixels)), plan).numpy()


@pytest.mark.parametrize("interpolation,resize,crop,count", [("bicubic", 256, 224, 200), ("bilinear", None, 224, 40),
                                                             ("bicubic", None, 64, 40), ("bilinear", 72, 64, 40)])
def test_crops_are_pillow_bytes_on_random_sizes(interpolation, resize, crop, count):
    spec = {"resize": resize, "crop": crop, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": interpolation}
    rng = np.random.default_rng(1)
    for width, height in _sizes(count, seed=crop + (resize or 0)):
        image = _photo(rng, width, height)
        expected = image_crop(image, spec, max_pixels=10**9)[0]
        got = _crop(image, spec)
        differ = np.argwhere(got != expected)
        assert differ.size == 0, f"{width}x{height}: {len(differ)} bytes differ, first at {differ[0].tolist()}"


def test_a_batch_of_mixed_regions_resized_at_once_gives_each_images_bytes():
    """resize_regions: regions of many sizes and both pass orders in one arena, resized in padded groups, each
    crop equal to Pillow's (and none written but its own)."""
    spec = {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    rng = np.random.default_rng(3)
    sizes = _sizes(24, seed=5)[:24] + [(256, 256), (224, 300), (512, 1038), (900, 256), (1, 700), (700, 1)]
    images = [_photo(rng, w, h) for w, h in sizes]
    arena, regions, offset = [], [], 0
    for number, image in enumerate(images):
        plan = resample.plan(image.size, spec)
        pixels = np.ascontiguousarray(np.asarray(image)[plan.rows[0]:plan.rows[1], plan.cols[0]:plan.cols[1]])
        arena.append(pixels.reshape(-1))
        regions.append((len(images) - 1 - number, offset, plan))  # positions reversed: each goes to its own place
        offset += pixels.size
    assert len({(p.vertical_first, p.row_weights is None, p.col_weights is None) for _, _, p in regions}) >= 3
    crops = torch.full((len(images), 224, 224, 3), 7, dtype=torch.uint8)
    resample.resize_regions(torch.from_numpy(np.concatenate(arena)), regions, crops)
    for number, image in enumerate(images):
        expected = image_crop(image, spec, max_pixels=10**9)[0]
        assert np.array_equal(crops[len(images) - 1 - number].numpy(), expected), image.size


@pytest.mark.skipif(not resample._VERTICAL_FIRST_RULE, reason="this Pillow always resizes horizontally first")
def test_both_pass_orders_occur_and_matter():
    spec = {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    assert resample.plan((512, 1038), spec).vertical_first and not resample.plan((1038, 512), spec).vertical_first
    image = _photo(np.random.default_rng(2), 512, 1038)
    plan = resample.plan(image.size, spec)
    swapped = resample.CropPlan(**{**plan.__dict__, "vertical_first": False})
    pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(image)[plan.rows[0]:plan.rows[1], plan.cols[0]:plan.cols[1]]))
    assert not torch.equal(resample.resize_crop(pixels, swapped), resample.resize_crop(pixels, plan))


def test_the_plan_reads_only_what_the_crop_needs():
    spec = {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    plan = resample.plan((1500, 1000), spec)  # resized to 384 x 256, crop 224 x 224 from (80, 16)
    assert plan.rows[1] - plan.rows[0] < 1000 and plan.cols[1] - plan.cols[0] < 1500 * 0.65
    assert plan.row_weights.dtype == np.int32  # 22-bit fixed point: each row's weights sum to 1.0 within rounding
    assert np.abs(plan.row_weights.sum(axis=1) - (1 << 22)).max() <= plan.row_weights.shape[1]
