"""Pillow's resize and centre crop, byte for byte, in torch: so that the resize can run on a GPU.

Pillow resamples in integer arithmetic (``libImaging/Resample.c``): per
output pixel, filter weights computed in double, normalised, turned into
22-bit fixed point (rounded away from zero); one pass per axis, each summing
``pixel * weight`` from a rounding bias of ``1 << 21`` over uint8 input and
clipping ``sum >> 22`` to 0..255. The horizontal pass comes first, unless
(Pillow 13 and later) the height shrinks by more than twice as many pixels
as the width: the passes round between them, so the order changes bytes.
Here the weights
are computed with NumPy in the same operation order (so the doubles round
alike; the weight sum is accumulated tap by tap, not pairwise), and the
passes run as integer gathers and sums in torch, on any device.

Only the output pixels inside the centre crop are computed, from only the
input rows and columns they read: each output pixel depends on its own
weights and on the uint8 result of the first pass alone, so they equal
Pillow's full resize followed by the crop
(:func:`specdet.runtime.preprocess.image_crop`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import PIL

from specdet.runtime.preprocess import crop_origin, resized_size

PRECISION_BITS = 32 - 8 - 2
# The pass order follows the Pillow that decodes here: before 13.0 it was always horizontal first.
_VERTICAL_FIRST_RULE = int(PIL.__version__.split(".")[0]) >= 13
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}


def _kernel(name: str, x: np.ndarray) -> np.ndarray:
    """Pillow's filters, in its operation order (Keys' cubic with a = -0.5; the triangle)."""
    x = np.abs(x)
    if name == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def coefficients(in_size: int, out_size: int, name: str, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for outputs ``first .. first + count``.

    Returns ``(start [count] int64, weights [count, ksize] int32)``: output ``i``
    sums input ``start[i] + j`` times ``weights[i, j]`` (zero past its taps).
    """
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[name] * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = 0.0 + (np.arange(first, first + count, dtype=np.float64) + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    inside = taps[None, :] < xmax[:, None]
    offsets = (taps[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5
    k = np.where(inside, _kernel(name, offsets * ss), 0.0)
    ww = np.zeros(count)
    for j in range(ksize):  # tap by tap, as Pillow adds them: a pairwise sum would round differently
        ww = ww + k[:, j]
    k = np.where(ww[:, None] != 0.0, k / np.where(ww == 0.0, 1.0, ww)[:, None], k)
    v = k * (1 << PRECISION_BITS)
    weights = np.trunc(np.where(k < 0, -0.5 + v, 0.5 + v)).astype(np.int32)
    return xmin, np.where(inside, weights, 0).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class CropPlan:
    """How to cut one image's centre crop from its full-size pixels: the input rows and columns it reads, each
    axis's weights (None: that axis keeps its size, the crop takes input pixels as they are), the pass order."""

    rows: tuple[int, int]  # input rows [first, last) that the crop reads
    cols: tuple[int, int]  # input columns [first, last)
    row_start: np.ndarray  # [crop] first input row of each output row, relative to rows[0]
    row_weights: np.ndarray | None  # [crop, taps] int32
    col_start: np.ndarray  # [crop] relative to cols[0]
    col_weights: np.ndarray | None
    vertical_first: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of the input pixels :func:`resize_crop` takes."""
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0], 3


def plan(size: tuple[int, int], spec: dict[str, Any]) -> CropPlan | None:
    """The crop plan of an image of ``size`` (width, height) under the preprocessing ``spec``; None for an image
    the crop pads (``pad_small``), which has nothing to resample and is cropped on the CPU."""
    width, height = size
    new_width, new_height = resized_size(size, spec)
    crop = spec["crop"]
    if min(new_width, new_height) < crop:
        return None
    left, top = crop_origin((new_width, new_height), crop)
    axes = []
    for in_size, out_size, first in ((height, new_height, top), (width, new_width, left)):
        if in_size == out_size:
            start = np.arange(first, first + crop, dtype=np.int64)
            axes.append(((first, first + crop), start - first, None))
            continue
        start, weights = coefficients(in_size, out_size, spec["interpolation"], first, crop)
        used = np.flatnonzero((weights != 0).any(axis=0))
        weights = weights[:, :int(used.max()) + 1 if used.size else 1]
        lo, hi = int(start.min()), int((start + weights.shape[1]).max())
        axes.append(((lo, min(hi, in_size)), start - lo, weights))
    (rows, row_start, row_weights), (cols, col_start, col_weights) = axes
    # Pillow 13's Resample.c: vertical first when the height shrinks by more than twice the width's pixels.
    shrink = height - new_height
    vertical_first = _VERTICAL_FIRST_RULE and shrink > 0 and shrink > (width - new_width) * 2
    return CropPlan(rows, cols, row_start, row_weights, col_start, col_weights, vertical_first)


def resize_crop(pixels, crop_plan: CropPlan):
    """Apply ``crop_plan`` to ``pixels``, a torch uint8 tensor of :attr:`CropPlan.shape` holding exactly the plan's
    input rows and columns (on any device): the ``[crop, crop, 3]`` uint8 centre crop, Pillow's bytes."""
    crop = len(crop_plan.row_start)
    out = pixels.new_empty((1, crop, crop, 3))
    resize_regions(pixels.reshape(-1), [(0, 0, crop_plan)], out)
    return out[0]


def resize_regions(arena, regions: list[tuple[int, int, CropPlan]], crops) -> None:
    """The crops of a batch's regions, all at once: for each ``(position, offset, CropPlan)``, ``crops[position]``
    (a uint8 ``[N, crop, crop, 3]`` tensor) from the region's pixels at byte ``offset`` of ``arena`` (uint8, on the
    crops' device), as :func:`resize_crop` makes it.

    Images whose passes are alike (their order, and which axes resize) run as one zero-padded batch: per pass, a
    gather and an integer multiply-add per tap, however many images there are (one small kernel sequence per
    image kept a GPU waiting on the launches). Each image's indices stay inside its own pixels, so the padding
    is never read.
    """

    groups: dict[tuple[bool, bool, bool], list[tuple[int, int, CropPlan]]] = {}
    for region in regions:
        crop_plan = region[2]
        key = (crop_plan.vertical_first, crop_plan.row_weights is None, crop_plan.col_weights is None)
        groups.setdefault(key, []).append(region)
    for members in groups.values():
        made = _resize_group(arena, members)
        for number, (position, _, _) in enumerate(members):
            crops[position] = made[number]


def _resize_group(arena, members: list[tuple[int, int, CropPlan]]):
    """``[len(members), crop, crop, 3]`` uint8: the crops of regions whose plans have the same passes."""
    import torch

    shapes = [crop_plan.shape for _, _, crop_plan in members]
    x = torch.zeros((len(members), max(s[0] for s in shapes), max(s[1] for s in shapes), 3), dtype=torch.uint8,
                    device=arena.device)
    for number, ((_, offset, _), (height, width, _)) in enumerate(zip(members, shapes)):
        x[number, :height, :width] = arena[offset:offset + height * width * 3].view(height, width, 3)
    plans = [crop_plan for _, _, crop_plan in members]
    extents = {0: [s[0] for s in shapes], 1: [s[1] for s in shapes]}  # each image's rows and columns so far
    axes = [1, 0] if not plans[0].vertical_first else [0, 1]
    for axis in axes:
        starts = [p.row_start if axis == 0 else p.col_start for p in plans]
        weights = [p.row_weights if axis == 0 else p.col_weights for p in plans]
        x = _take(x, np.stack(starts), axis) if weights[0] is None else _pass(x, starts, weights, extents[axis], axis)
        extents[axis] = [len(starts[0])] * len(plans)
    return x


def _take(x, start: np.ndarray, axis: int):
    """The rows (``axis`` 0) or columns (1) ``start[g]`` of each image ``g`` of ``x`` ``[G, H, W, 3]``."""
    import torch

    index = torch.as_tensor(start, device=x.device)
    count = start.shape[1]
    if axis == 1:
        return torch.gather(x, 2, index[:, None, :, None].expand(x.shape[0], x.shape[1], count, 3))
    return torch.gather(x, 1, index[:, :, None, None].expand(x.shape[0], count, x.shape[2], 3))


def _pass(x, starts: list[np.ndarray], weights: list[np.ndarray], extents: list[int], axis: int):
    """One fixed-point pass along ``axis`` (0: rows, 1: columns) of each image of a uint8 ``[G, H, W, 3]`` tensor:
    image ``g``'s output ``i`` sums its input ``starts[g][i] + t`` (within its ``extents[g]``) times
    ``weights[g][i, t]``, zero past its taps."""
    import torch

    device = x.device
    count, taps = len(starts[0]), max(w.shape[1] for w in weights)
    index = np.zeros((len(starts), count, taps), dtype=np.int64)
    table = np.zeros((len(starts), count, taps), dtype=np.int32)
    for number, (start, weight, extent) in enumerate(zip(starts, weights, extents)):
        index[number] = np.minimum(start[:, None] + np.arange(taps)[None, :], extent - 1)  # past its taps: weight 0
        table[number, :, :weight.shape[1]] = weight
    index, table = torch.as_tensor(index, device=device), torch.as_tensor(table, device=device)
    images = x.shape[0]
    if axis == 1:
        shape, picks = (images, x.shape[1], count, 3), lambda t: (index[:, None, :, t, None], table[:, None, :, t, None])
    else:
        shape, picks = (images, count, x.shape[2], 3), lambda t: (index[:, :, t, None, None], table[:, :, t, None, None])
    # Pillow's accumulator is a C int from the rounding bias: 22-bit weights summing to about 1 over uint8 cannot
    # overflow it, so int32 here gives its sums exactly, tap by tap in any order.
    total = torch.full(shape, 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=device)
    for tap in range(taps):
        at, weight = picks(tap)
        total += torch.gather(x, axis + 1, at.expand(shape)).to(torch.int32) * weight
    # Pillow's clip8: 0 at or below zero, else the sum shifted down, at most 255.
    return torch.where(total <= 0, 0, total >> PRECISION_BITS).clamp_(max=255).to(torch.uint8)
