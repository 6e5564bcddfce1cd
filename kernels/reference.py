"""Float64 NumPy references of the spectral ops: the definition the kernels are checked against.

One definition per op, written with NumPy only (no torch), so that the
kernels, the golden data of the contract files (:mod:`specdet.kernels.contract`)
and the tests have a reference that shares no code with the implementations
under test. The semantics are those of :mod:`specdet.models.spectral`:

- masks: a bin's radius is computed in float64 exactly as
  ``spectral.radial_distance`` does (``fftfreq`` as ``k * (1 / n)``, the
  seed's ``(k - n // 2) / n``, ``sqrt(fy**2 + fx**2)``) and compared with the
  band edges rounded to float32 (the ONNX attribute's type), ring ``k`` being
  ``[edge_{k-1}, edge_k)``;
- band split: half spectrum (``rfft2``, ``norm="ortho"``), one masked
  ``irfft2`` per band;
- spectrum statistic: mean magnitude of the orthonormal ``rfft2`` over its
  ``H x (W // 2 + 1)`` bins.

Inputs of any float dtype are widened to float64 first; a float16 input's
reference is the reference of its exact float64 value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

CENTRES = ("zero", "seed")
MAX_RADIUS = math.sqrt(0.5)  # the largest radius of any bin, in cycles per pixel
MAX_BANDS = 16  # the kernels' limit: at most 15 edges


def float32_edges(edges: Sequence[float]) -> list[float]:
    """The edges as the ONNX node and the kernels carry them: float32 values."""
    out = [float(np.float32(e)) for e in edges]
    if any(not math.isfinite(e) for e in out):
        raise ValueError(f"band edges must be finite, got {list(edges)}")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"band edges must be strictly increasing, got {out}")
    return out


def _frequencies(n: int, centre: str) -> np.ndarray:
    if centre == "zero":
        return np.fft.fftfreq(n)  # k * (1 / n), as torch.fft.fftfreq
    if centre == "seed":
        return (np.arange(n, dtype=np.float64) - n // 2) / n
    raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}")


def radial_distance(h: int, w: int, centre: str = "zero") -> np.ndarray:
    """Radius (cycles per pixel, float64) of every bin of an unshifted ``h x w`` spectrum."""
    fy, fx = _frequencies(h, centre), _frequencies(w, centre)
    return np.sqrt(fy[:, None] * fy[:, None] + fx[None, :] * fx[None, :])


def band_index(h: int, w: int, edges: Sequence[float], centre: str = "zero") -> np.ndarray:
    """Band of every bin, ``[h, w]`` int: the number of (float32) edges at or below its radius."""
    r = radial_distance(h, w, centre)
    index = np.zeros((h, w), dtype=np.int64)
    for e in float32_edges(edges):
        index += r >= e
    return index


def band_masks(h: int, w: int, edges: Sequence[float], centre: str = "zero") -> np.ndarray:
    """0/1 masks ``[K, h, w]`` (float64), ``K = len(edges) + 1``; they partition the bins."""
    index = band_index(h, w, edges, centre)
    return (index[None] == np.arange(len(edges) + 1)[:, None, None]).astype(np.float64)


def band_split(x: np.ndarray, edges: Sequence[float], centre: str = "zero") -> np.ndarray:
    """``[B, C, H, W]`` to ``[B, K, C, H, W]`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"band_split takes [B, C, H, W], got shape {x.shape}")
    h, w = x.shape[-2:]
    half = band_masks(h, w, edges, centre)[..., : w // 2 + 1]  # [K, H, W//2+1]
    spectrum = np.fft.rfft2(x, norm="ortho")  # [B, C, H, W//2+1]
    banded = spectrum[:, None] * half[None, :, None]  # [B, K, C, H, W//2+1]
    return np.fft.irfft2(banded, s=(h, w), norm="ortho")


def spectrum_magnitude_mean(x: np.ndarray) -> np.ndarray:
    """``[B, C, H, W]`` to ``[B, C]`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"spectrum_magnitude_mean takes [B, C, H, W], got shape {x.shape}")
    return np.abs(np.fft.rfft2(x, norm="ortho")).mean(axis=(-2, -1))


REFERENCES = {"BandSplit": band_split, "SpectrumMagnitudeMean": spectrum_magnitude_mean}


def run(op: str, x: np.ndarray, attributes: dict | None = None) -> np.ndarray:
    """The reference of the ONNX op ``op`` (``BandSplit``, ``SpectrumMagnitudeMean``) with its node attributes."""
    attributes = dict(attributes or {})
    if op == "BandSplit":
        return band_split(x, attributes["edges"], attributes.get("centre", "zero"))
    if op == "SpectrumMagnitudeMean":
        return spectrum_magnitude_mean(x)
    raise KeyError(f"no reference for op {op!r}; known: {sorted(REFERENCES)}")
