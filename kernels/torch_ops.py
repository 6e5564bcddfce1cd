"""CUDA kernels of the existing ``specdet::`` torch custom ops, over the kernel library's launch functions.

``specdet.models.spectral`` defines the custom ops ``specdet::band_split``
and ``specdet::spectrum_magnitude_mean`` (their implementation is the
``torch.fft`` reference, on every device). :func:`register` adds a CUDA
kernel to each: the same C launch function as the TensorRT plugin, called
through ctypes on the current CUDA stream, with a workspace from torch's
caching allocator. CPU tensors keep the ``torch.fft`` implementation; CUDA
tensors of other dtypes than float32/float16 fall back to it too.

Nothing is built or loaded until the first CUDA call: then the library comes
from ``$SPECDET_KERNELS_LIB`` or is built once into the cache
(:mod:`specdet.kernels.build`, needs ``nvcc``). ``$SPECDET_KERNELS_METHOD``
(``auto``, ``dft``, ``cufft``) picks the method, as for the plugins.

    from specdet.kernels.torch_ops import use_kernels
    with use_kernels():          # the models call the custom ops, whose CUDA kernels are ours
        logits = model(images.cuda())
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

from specdet.kernels import library
from specdet.models import spectral

_DTYPES = {torch.float32: "float32", torch.float16: "float16"}
_lock = threading.Lock()
_plans: dict[int, library.FftPlans] = {}
_registered = False


def method() -> str:
    return os.environ.get("SPECDET_KERNELS_METHOD", "auto")


def _plans_for(lib: library.KernelLibrary, device: torch.device) -> library.FftPlans:
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _lock:
        if index not in _plans:
            _plans[index] = lib.create_plans()
        return _plans[index]


def _library(device: torch.device) -> library.KernelLibrary:
    major, minor = torch.cuda.get_device_capability(device)
    return library.load(archs=f"{major}{minor}")  # a build on first use compiles for this GPU only


def _launch(op: str, params, x: torch.Tensor, y: torch.Tensor) -> None:
    lib = _library(x.device)
    size = lib.workspace_size(op, params)
    with torch.cuda.device(x.device):
        workspace = torch.empty(size, dtype=torch.uint8, device=x.device) if size else None
        plans = _plans_for(lib, x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        with plans.lock:  # a plan cache serves one caller at a time
            lib.launch(op, params, x.data_ptr(), y.data_ptr(), workspace.data_ptr() if size else 0, size, plans, stream)


def band_split_cuda(x: torch.Tensor, edges: list[float], centre: str) -> torch.Tensor:
    if x.dtype not in _DTYPES or x.dim() != 4 or len(edges) > library.MAX_BANDS - 1:
        masks = spectral.radial_band_masks(x.shape[-2], x.shape[-1], edges, centre).to(x.device)
        return spectral.band_split_reference(x, masks)
    x = x.contiguous()
    b, c, h, w = x.shape
    y = x.new_empty((b, len(edges) + 1, c, h, w))
    if y.numel():
        _launch("BandSplit", library.band_split_params(x.shape, edges, centre, _DTYPES[x.dtype], method()), x, y)
    return y


def spectrum_magnitude_mean_cuda(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in _DTYPES or x.dim() != 4:
        return spectral.spectrum_magnitude_mean_reference(x)
    x = x.contiguous()
    y = x.new_empty(x.shape[:2])
    if y.numel():
        _launch("SpectrumMagnitudeMean", library.spectrum_magnitude_mean_params(x.shape, _DTYPES[x.dtype], method()), x, y)
    return y


def register() -> None:
    """Adds the CUDA kernels to the ``specdet::`` custom ops (once per process; builds nothing yet)."""
    global _registered
    with _lock:
        if _registered:
            return
        torch.library.register_kernel("specdet::band_split", "cuda", band_split_cuda)
        torch.library.register_kernel("specdet::spectrum_magnitude_mean", "cuda", spectrum_magnitude_mean_cuda)
        _registered = True


@contextlib.contextmanager
def use_kernels() -> Iterator[None]:
    """Within this block the models' spectral ops call the custom ops, which run our kernels on CUDA tensors."""
    register()
    with spectral.use_custom_ops():
        yield
