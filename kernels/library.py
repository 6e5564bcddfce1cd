"""The kernel library's C interface from Python (ctypes): what the torch ops, the tests and the benchmark call.

:class:`KernelLibrary` wraps ``libspecdet_kernels.so`` (CUDA) or
``libspecdet_kernels_emu.so`` (the same kernels run on the CPU, see
``kernels/common/emulation.h``); the parameter structs mirror the C headers
and are checked against the library's own ``sizeof`` when it is loaded.

:func:`load` finds the CUDA library: ``$SPECDET_KERNELS_LIB`` if set, else
the cached build of the current sources, built on first use when ``nvcc`` is
there (:mod:`specdet.kernels.build`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from specdet.errors import SpecdetError
from specdet.kernels import build as kbuild

MAX_BANDS = 16
DTYPES = {"float32": 0, "float16": 1}
CENTRES = {"zero": 0, "seed": 1}
METHODS = {"auto": 0, "dft": 1, "cufft": 2}
STATUS = {0: "OK", 1: "INVALID_ARGUMENT", 2: "CUDA", 3: "CUFFT", 4: "WORKSPACE"}
ABI_VERSION = 1


class KernelError(SpecdetError):
    """A launch function returned an error status."""

    def __init__(self, function: str, status: int, message: str):
        super().__init__(f"{function} failed: {STATUS.get(status, status)} ({message})")
        self.status = status


class BandSplitParams(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int32),
        ("channels", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("num_edges", ctypes.c_int32),
        ("edges", ctypes.c_float * (MAX_BANDS - 1)),
        ("centre", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("method", ctypes.c_int32),
    ]


class SpectrumMagnitudeMeanParams(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int32),
        ("channels", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("method", ctypes.c_int32),
    ]


@dataclasses.dataclass(frozen=True)
class _Op:
    c_name: str  # the launch function
    params: type


OPS = {
    "BandSplit": _Op("specdet_band_split", BandSplitParams),
    "SpectrumMagnitudeMean": _Op("specdet_spectrum_magnitude_mean", SpectrumMagnitudeMeanParams),
}


def band_split_params(
    shape: Sequence[int], edges: Sequence[float], centre: str, dtype: str, method: str = "auto"
) -> BandSplitParams:
    b, c, h, w = (int(d) for d in shape)
    if len(edges) > MAX_BANDS - 1:
        raise SpecdetError(f"BandSplit takes at most {MAX_BANDS - 1} edges, got {len(edges)}")
    params = BandSplitParams(b, c, h, w, len(edges))
    for i, e in enumerate(edges):
        params.edges[i] = float(e)
    params.centre = _lookup(CENTRES, centre, "centre")
    params.dtype = _lookup(DTYPES, dtype, "dtype")
    params.method = _lookup(METHODS, method, "method")
    return params


def spectrum_magnitude_mean_params(shape: Sequence[int], dtype: str, method: str = "auto") -> SpectrumMagnitudeMeanParams:
    b, c, h, w = (int(d) for d in shape)
    return SpectrumMagnitudeMeanParams(b, c, h, w, _lookup(DTYPES, dtype, "dtype"), _lookup(METHODS, method, "method"))


def op_params(op: str, shape: Sequence[int], attributes: dict | None, dtype: str, method: str) -> tuple[ctypes.Structure, tuple[int, ...]]:
    """The parameter struct of ``op`` (an ONNX op name) for an input shape, and the output shape."""
    shape = tuple(int(d) for d in shape)
    attributes = dict(attributes or {})
    if op == "BandSplit":
        edges = list(attributes["edges"])
        params = band_split_params(shape, edges, attributes.get("centre", "zero"), dtype, method)
        return params, (shape[0], len(edges) + 1, *shape[1:])
    return spectrum_magnitude_mean_params(shape, dtype, method), shape[:2]


def _lookup(table: dict, key: str, what: str) -> int:
    if key not in table:
        raise SpecdetError(f"{what} must be one of {sorted(table)}, got {key!r}")
    return table[key]


class FftPlans:
    """A cuFFT plan cache (``specdet_fft_plans``); one per device and stream user, not thread-safe by itself."""

    def __init__(self, library: KernelLibrary):
        self._library = library
        handle = ctypes.c_void_p()
        library._check("specdet_fft_plans_create", library._lib.specdet_fft_plans_create(ctypes.byref(handle)))
        self.handle = handle
        self.lock = threading.Lock()

    def __del__(self):
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            self._library._lib.specdet_fft_plans_destroy(handle)


class KernelLibrary:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._lib = ctypes.CDLL(str(self.path))
        except OSError as error:
            raise SpecdetError(f"cannot load the kernel library {self.path}: {error}") from error
        lib = self._lib
        lib.specdet_kernels_abi_version.restype = ctypes.c_int
        lib.specdet_kernels_is_emulation.restype = ctypes.c_int
        lib.specdet_status_string.restype = ctypes.c_char_p
        lib.specdet_status_string.argtypes = [ctypes.c_int]
        lib.specdet_fft_plans_create.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.specdet_fft_plans_destroy.argtypes = [ctypes.c_void_p]
        lib.specdet_fft_plans_destroy.restype = None
        for op in OPS.values():
            pointer = ctypes.POINTER(op.params)
            for suffix, restype in (("_validate", ctypes.c_int), ("_resolved_method", ctypes.c_int), ("_workspace_size", ctypes.c_size_t)):
                fn = getattr(lib, op.c_name + suffix)
                fn.argtypes, fn.restype = [pointer], restype
            getattr(lib, op.c_name + "_params_size").restype = ctypes.c_size_t
            prepare = getattr(lib, op.c_name + "_prepare")
            prepare.argtypes, prepare.restype = [pointer, ctypes.c_void_p], ctypes.c_int
            launch = getattr(lib, op.c_name)
            launch.argtypes = [pointer, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
            launch.restype = ctypes.c_int
            size = getattr(lib, op.c_name + "_params_size")()
            if size != ctypes.sizeof(op.params):
                raise SpecdetError(f"{self.path}: {op.c_name} params are {size} bytes, the binding expects {ctypes.sizeof(op.params)}: rebuild")
        version = lib.specdet_kernels_abi_version()
        if version != ABI_VERSION:
            raise SpecdetError(f"{self.path}: ABI version {version}, this package expects {ABI_VERSION}: rebuild")
        self.is_emulation = bool(lib.specdet_kernels_is_emulation())

    def _check(self, function: str, status: int) -> None:
        if status != 0:
            raise KernelError(function, status, self._lib.specdet_status_string(status).decode())

    def validate(self, op: str, params) -> bool:
        return getattr(self._lib, OPS[op].c_name + "_validate")(ctypes.byref(params)) == 0

    def resolved_method(self, op: str, params) -> str:
        value = getattr(self._lib, OPS[op].c_name + "_resolved_method")(ctypes.byref(params))
        return {v: k for k, v in METHODS.items()}.get(value, "invalid")

    def workspace_size(self, op: str, params) -> int:
        return int(getattr(self._lib, OPS[op].c_name + "_workspace_size")(ctypes.byref(params)))

    def create_plans(self) -> FftPlans:
        return FftPlans(self)

    def prepare(self, op: str, params, plans: FftPlans | None) -> None:
        name = OPS[op].c_name + "_prepare"
        self._check(name, getattr(self._lib, name)(ctypes.byref(params), plans.handle if plans else None))

    def launch(self, op: str, params, x: int, y: int, workspace: int, workspace_size: int, plans: FftPlans | None, stream: int) -> None:
        """Runs the op on raw pointers (device pointers for the CUDA library, host ones for the emulation)."""
        name = OPS[op].c_name
        status = getattr(self._lib, name)(
            ctypes.byref(params), x, y, workspace or None, workspace_size, plans.handle if plans else None, stream or None
        )
        self._check(name, status)

    def run_host(self, op: str, x: np.ndarray, attributes: dict | None = None, method: str = "dft") -> np.ndarray:
        """Emulation library only: the op on a host array (float32 or float16), as the GPU would compute it."""
        if not self.is_emulation:
            raise SpecdetError("run_host needs the CPU emulation library; the CUDA library takes device pointers")
        x = np.ascontiguousarray(x)
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(x.dtype)
        if dtype is None:
            raise SpecdetError(f"the kernels take float32 or float16, got {x.dtype}")
        params, out_shape = op_params(op, x.shape, attributes, dtype, method)
        if not self.validate(op, params):
            raise KernelError(OPS[op].c_name + "_validate", 1, "parameters outside the op's contract")
        y = np.empty(out_shape, dtype=x.dtype)
        size = self.workspace_size(op, params)
        workspace = np.empty(max(size, 1), dtype=np.uint8)
        plans = self.create_plans()
        self.launch(op, params, x.ctypes.data, y.ctypes.data, workspace.ctypes.data, size, plans, 0)
        return y


@functools.cache
def _load(path: str) -> KernelLibrary:
    return KernelLibrary(path)


def library_path(*, build_if_missing: bool = True, archs: str | None = None) -> Path:
    """The CUDA kernel library: ``$SPECDET_KERNELS_LIB``, else the cached build (made now if allowed)."""
    env = os.environ.get("SPECDET_KERNELS_LIB")
    if env:
        return Path(env)
    if not build_if_missing:
        raise SpecdetError("no kernel library: set SPECDET_KERNELS_LIB or run python -m specdet.kernels.build")
    result = kbuild.build(archs=archs or os.environ.get("SPECDET_KERNELS_ARCH"))
    if result.kernels is None:
        raise SpecdetError(f"the kernel build in {result.build_dir} produced no libspecdet_kernels.so")
    return result.kernels


def load(*, build_if_missing: bool = True, archs: str | None = None) -> KernelLibrary:
    """The CUDA kernel library, loaded once per process (``archs``: what a build compiles for, CMake syntax)."""
    return _load(str(library_path(build_if_missing=build_if_missing, archs=archs)))


def load_emulation(path: str | os.PathLike | None = None) -> KernelLibrary:
    """The CPU emulation library (built into the cache from the current sources if no path is given)."""
    if path is None:
        path = kbuild.build(cuda=False, emulation=True).emulation
    return _load(str(path))
