"""FLOPs per image of a torch module, counted by PyTorch's ``FlopCounterMode``.

``FlopCounterMode`` counts matrix products and convolutions (2 flops per
multiply-add). Two kinds of op it misses are added here:

- CPU attention (``_scaled_dot_product_flash_attention_for_cpu``), counted
  with PyTorch's own attention formula;
- FFTs, at the conventional 5 N log2 N flops per complex transform of N
  points and half that for a real-input or real-output one.

Elementwise ops, normalisations and softmax are not counted (as usual for
model FLOPs). The count is the model's arithmetic in PyTorch: an ONNX file
whose FFTs are lowered to matrix products (``--fft matmul``) does more work
for the same image, so a fraction of peak computed from this count is a
lower bound on how busy such a file keeps the machine.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

NOTE = (
    "torch.utils.flop_counter (matmul, conv, attention; 2 flops per multiply-add) "
    "+ FFTs at 5 N log2 N (complex) and 2.5 N log2 N (real); elementwise ops not counted"
)
aten = torch.ops.aten


def _points(shape, dim) -> tuple[int, int]:
    """(points per transform, number of transforms) of an FFT over ``dim`` of ``shape``."""
    n = math.prod(shape[d] for d in dim)
    return n, math.prod(shape) // max(n, 1)


def _fft_r2c(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n, count = _points(input_shape, dim)
    return int(2.5 * n * math.log2(n) * count) if n > 1 else 0


def _fft_c2c(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n, count = _points(input_shape, dim)
    return int(5 * n * math.log2(n) * count) if n > 1 else 0


def _fft_c2r(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n, count = _points(out_shape, dim)
    return int(2.5 * n * math.log2(n) * count) if n > 1 else 0


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


EXTRA_FORMULAS = {
    aten._fft_r2c: _fft_r2c,
    aten._fft_c2c: _fft_c2c,
    aten._fft_c2r: _fft_c2r,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
}


def count_flops(module: torch.nn.Module, batch: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``batch`` (no gradients)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        module(batch)
    return int(counter.get_total_flops())


def flops_per_image(module: torch.nn.Module, image: torch.Tensor) -> int:
    """FLOPs for one image: ``image`` is a batch of 1, ``[1, 3, H, W]``."""
    if image.shape[0] != 1:
        raise ValueError(f"flops_per_image takes a batch of 1, not {image.shape[0]}")
    return count_flops(module, image)
