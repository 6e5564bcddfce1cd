"""One-dimensional discrete Fourier transforms as constant matrices (the ``matmul`` lowering).

A length-``n`` DFT along one axis is a matrix product with
``exp(-2j*pi*k*t/n)``; its cosine and sine parts are built here in float64,
with the phase ``k*t`` reduced modulo ``n`` in integers so that large sizes
keep full precision, and cached per size. Each matrix is then rounded once
to the dtype of the tensor it multiplies, which is how it is stored in an
exported file.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

NORMS = ("backward", "ortho", "forward")


def scale(n: int, norm: str | None, inverse: bool) -> float:
    """The factor torch.fft applies for ``norm`` on a length-``n`` transform."""
    norm = norm or "backward"
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "ortho":
        return 1.0 / np.sqrt(n)
    scaled_direction_is_inverse = norm == "backward"
    return 1.0 / n if inverse == scaled_direction_is_inverse else 1.0


@functools.lru_cache(maxsize=64)
def _cos_sin(rows: int, cols: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of ``2*pi*k*t/n`` for ``k < rows``, ``t < cols`` (float64)."""
    phase = (np.arange(rows, dtype=np.int64)[:, None] * np.arange(cols, dtype=np.int64)[None, :]) % n
    angle = 2.0 * np.pi * phase / n
    return np.cos(angle), np.sin(angle)


# The NumPy type of each torch dtype a matrix can be stored in without a cast in the graph.
_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


def _const(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``array`` as a tensor of ``like``'s dtype and device, rounded in NumPy.

    Under the exporter's trace, a torch conversion of a float64 constant is
    an op like any other: the file would store the float64 matrix and cast it
    on every run. Rounding before the tensor exists stores the matrix in the
    precision the graph computes in. (bfloat16, which NumPy lacks, is left
    to torch.)
    """
    stored = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES.get(like.dtype, np.float64))
    return torch.from_numpy(stored).to(dtype=like.dtype, device=like.device)


def c2c_matrices(n: int, inverse: bool, norm: str | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, S)`` with ``DFT = C - i*S`` (forward) or ``C + i*S`` (inverse), norm applied."""
    cos, sin = _cos_sin(n, n, n)
    factor = scale(n, norm, inverse)
    return _const(cos * factor, like), _const(sin * factor, like)


def r2c_matrices(n: int, norm: str | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, S)`` of the onesided forward transform: ``n // 2 + 1`` output bins."""
    cos, sin = _cos_sin(n // 2 + 1, n, n)
    factor = scale(n, norm, inverse=False)
    return _const(cos * factor, like), _const(sin * factor, like)


def c2r_matrices(n: int, norm: str | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``x = A @ re - B @ im`` for a Hermitian half spectrum of ``n // 2 + 1`` bins.

    Bins other than the zero frequency and (for even ``n``) the Nyquist bin
    stand for two conjugate bins, hence the weight 2. The sine of those two
    bins is zero, so their imaginary parts are ignored, as ``torch.fft.irfft``
    does.
    """
    bins = n // 2 + 1
    cos, sin = _cos_sin(n, bins, n)
    weight = np.full(bins, 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    factor = scale(n, norm, inverse=True)
    return _const(cos * weight * factor, like), _const(sin * weight * factor, like)
