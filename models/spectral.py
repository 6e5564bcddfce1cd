"""The spectral ops of both detectors, each defined once.

Every op here is written with ``torch.fft``: that is the reference and the
training path. The other FFT modes (``dft``, ``matmul``) are not written per
op: the exporter (``specdet.export.lowering``) lowers any ``torch.fft`` code,
these ops included, to real arithmetic. Inside :func:`use_custom_ops` every op
calls its ``torch.library`` custom op instead (``specdet::band_split``,
``specdet::spectrum_magnitude_mean``): the exporter's ``plugin`` mode turns
each call into one node of the ``specdet`` ONNX domain, and
``specdet.kernels.torch_ops`` gives the custom ops our CUDA kernels. The
choice is per thread (and per asyncio task), so one thread exporting in
plugin mode does not change what another one runs.

Ops:
- :func:`band_split`: image ``[B, C, H, W]`` to radial frequency bands
  ``[B, K, C, H, W]`` (forward FFT once, one masked inverse per band). The
  masks partition the spectrum, so the bands sum back to the image.
- :func:`spectrum_magnitude_mean`: feature map ``[B, C, H, W]`` to ``[B, C]``,
  the mean magnitude of the orthonormal real 2-D FFT over its
  ``H x (W // 2 + 1)`` bins.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

# Band edges are normalised radial frequencies: the distance of a bin from the
# zero frequency, in cycles per pixel along each axis, so the largest possible
# radius is sqrt(0.5 ** 2 + 0.5 ** 2).
MAX_RADIUS = math.sqrt(0.5)

CENTRES = ("zero", "seed")


def default_band_edges(num_bands: int) -> list[float]:
    """Inner edges of ``num_bands`` rings of equal radial width."""
    if num_bands < 1:
        raise ValueError(f"num_bands must be at least 1, got {num_bands}")
    return [MAX_RADIUS * i / num_bands for i in range(1, num_bands)]


def radial_distance(h: int, w: int, centre: str = "zero") -> torch.Tensor:
    """Radial frequency of every bin of an unshifted ``h x w`` spectrum (float64).

    ``centre="zero"`` measures from the zero frequency (bin (0, 0)), so low
    bands hold low frequencies. ``centre="seed"`` reproduces the seed code,
    which measured from bin (h/2, w/2) of the unshifted spectrum: its "low"
    band is really the highest frequencies. Kept only for comparison.
    """
    if centre == "zero":
        fy = torch.fft.fftfreq(h, dtype=torch.float64)
        fx = torch.fft.fftfreq(w, dtype=torch.float64)
    elif centre == "seed":
        fy = (torch.arange(h, dtype=torch.float64) - h // 2) / h
        fx = (torch.arange(w, dtype=torch.float64) - w // 2) / w
    else:
        raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}")
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def radial_band_masks(h: int, w: int, edges: Sequence[float], centre: str = "zero") -> torch.Tensor:
    """0/1 masks ``[K, h, w]`` (float32) of the rings ``[edge_{k-1}, edge_k)``.

    ``edges`` are the ``K - 1`` increasing inner edges; the first ring starts at
    0 and the last one takes every bin beyond the last edge, so every bin falls
    in exactly one ring and the bands sum back to the input.
    """
    # Rings are compared in float32 edges: the plugin node carries the edges as
    # an ONNX float attribute (float32), and on square images the default edges
    # fall exactly on lattice radii, so a float64 edge and its float32 rounding
    # would put some bins in different rings.
    edges = [float(np.float32(e)) for e in edges]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"band edges must be strictly increasing, got {edges}")
    r = radial_distance(h, w, centre)
    bounds = [-math.inf, *edges, math.inf]
    masks = [(r >= lo) & (r < hi) for lo, hi in zip(bounds, bounds[1:])]
    return torch.stack(masks).to(torch.float32)


def _fft_precision(x: torch.Tensor) -> torch.Tensor:
    """Half-precision input is transformed in float32.

    GPU autocast does not upcast FFTs (the CPU's does), cuFFT has no bfloat16,
    and a 224x224 half-precision spectrum loses most of its digits.
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def band_split_reference(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``torch.fft`` band split: ``[B, C, H, W]`` and masks ``[K, H, W]`` to ``[B, K, C, H, W]``.

    Works on the half spectrum (rfft2): a mask that is symmetric under
    k -> -k keeps each band real, so ``irfft2`` of the masked half spectrum
    equals the real part of the full inverse FFT, at half the cost. Radial
    masks centred on the zero frequency are symmetric; the seed's are not
    exactly, and for those this returns the Hermitian-symmetrised band.
    """
    h, w = x.shape[-2:]
    x = _fft_precision(x)
    spectrum = torch.fft.rfft2(x, norm="ortho")  # [B, C, H, W//2+1]
    half = masks[..., : w // 2 + 1].to(x.dtype)  # [K, H, W//2+1]
    banded = spectrum.unsqueeze(1) * half.unsqueeze(1)  # [B, K, C, H, W//2+1]
    return torch.fft.irfft2(banded, s=(h, w), norm="ortho")


def spectrum_magnitude_mean_reference(x: torch.Tensor) -> torch.Tensor:
    """``torch.fft`` spectrum statistic: ``[B, C, H, W]`` to ``[B, C]``."""
    return torch.fft.rfft2(_fft_precision(x), norm="ortho").abs().mean(dim=(-2, -1))


# --- each op as one torch custom op: one ONNX node in plugin mode, our CUDA kernels with use_kernels ---

# A context variable, not a module global: each thread starts with the
# default (torch.fft), so concurrent exports and scoring do not see each
# other's choice.
_CUSTOM_OPS: contextvars.ContextVar[bool] = contextvars.ContextVar("specdet_custom_ops", default=False)


@contextlib.contextmanager
def use_custom_ops() -> Iterator[None]:
    """Within this block (in this thread or task) the ops call their ``specdet::`` custom ops."""
    token = _CUSTOM_OPS.set(True)
    try:
        yield
    finally:
        _CUSTOM_OPS.reset(token)


def custom_ops_enabled() -> bool:
    return _CUSTOM_OPS.get()


@torch.library.custom_op("specdet::band_split", mutates_args=())
def _band_split_op(x: torch.Tensor, edges: list[float], centre: str) -> torch.Tensor:
    masks = radial_band_masks(x.shape[-2], x.shape[-1], edges, centre).to(x.device)
    return band_split_reference(x, masks)


@_band_split_op.register_fake
def _(x: torch.Tensor, edges: list[float], centre: str) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.new_empty((b, len(edges) + 1, c, h, w))


@torch.library.custom_op("specdet::spectrum_magnitude_mean", mutates_args=())
def _spectrum_magnitude_mean_op(x: torch.Tensor) -> torch.Tensor:
    return spectrum_magnitude_mean_reference(x)


@_spectrum_magnitude_mean_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[:2])


# --- the ops as the models call them ---


def band_split(x: torch.Tensor, masks: torch.Tensor, edges: Sequence[float], centre: str) -> torch.Tensor:
    """Radial band split; ``masks`` must be ``radial_band_masks(H, W, edges, centre)``.

    The models keep the masks as a buffer (built once, moved with the model)
    and pass the edges too, so that the plugin node can carry them as
    attributes.
    """
    if _CUSTOM_OPS.get():
        return torch.ops.specdet.band_split(x, [float(e) for e in edges], centre)
    return band_split_reference(x, masks)


def spectrum_magnitude_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean magnitude of the orthonormal rfft2 of each channel: ``[B, C, H, W]`` to ``[B, C]``."""
    if _CUSTOM_OPS.get():
        return torch.ops.specdet.spectrum_magnitude_mean(x)
    return spectrum_magnitude_mean_reference(x)
