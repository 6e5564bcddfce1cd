"""A ctypes binding of libspecdet_runtime's C ABI (``include/specdet/specdet.h``).

Used by the tests and by the ``cpp-onnxruntime`` benchmark variant to call the C++ runtime from
Python exactly as a C caller would. Not a second runtime: no preprocessing happens here.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from specdet.errors import SpecdetError

OK = 0
STATUS_NAMES = {
    0: "OK", 1: "INVALID_ARGUMENT", 2: "BUFFER_TOO_SMALL", 3: "UNKNOWN_OPTION", 4: "IO", 5: "MANIFEST",
    6: "BACKEND", 7: "IMAGE", 8: "OUT_OF_MEMORY", 9: "UNSUPPORTED", 10: "INTERNAL", 11: "NON_FINITE_SCORE",
}
PIXELS_RGB8, PIXELS_RGBA8, PIXELS_GRAY8 = 1, 2, 3
LABEL_FAKE = 1


class RuntimeError_(SpecdetError):
    """A failed C call: ``status`` is the code's name (``"IMAGE"``), the message specdet_last_error()."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = STATUS_NAMES.get(status, str(status))


def load_library(path: str | os.PathLike) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    p, i32, i64, sz = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t
    signatures = {
        "specdet_abi_version": ([], ctypes.c_int),
        "specdet_last_error": ([], ctypes.c_char_p),
        "specdet_options_create": ([ctypes.POINTER(p)], ctypes.c_int),
        "specdet_options_destroy": ([p], None),
        "specdet_options_set_string": ([p, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
        "specdet_options_set_int": ([p, ctypes.c_char_p, i64], ctypes.c_int),
        "specdet_image_create_encoded": ([p, sz, ctypes.POINTER(p)], ctypes.c_int),
        "specdet_image_create_pixels": ([p, i32, i32, sz, i32, ctypes.POINTER(p)], ctypes.c_int),
        "specdet_image_destroy": ([p], None),
        "specdet_detector_create": ([ctypes.c_char_p, p, ctypes.POINTER(p)], ctypes.c_int),
        "specdet_detector_destroy": ([p], None),
        "specdet_detector_get_int": ([p, ctypes.c_char_p, ctypes.POINTER(i64)], ctypes.c_int),
        "specdet_detector_get_string": ([p, ctypes.c_char_p, ctypes.c_char_p, sz, ctypes.POINTER(sz)], ctypes.c_int),
        "specdet_detector_threshold": ([p, ctypes.POINTER(ctypes.c_double)], ctypes.c_int),
        "specdet_detector_score": ([p, ctypes.POINTER(p), sz, p, p, p, p, sz], ctypes.c_int),
        "specdet_detector_preprocess": ([p, p, p, sz], ctypes.c_int),
        "specdet_detector_infer": ([p, p, sz, sz, p, p, p, sz], ctypes.c_int),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result
    return lib


class CppDetector:
    """One ``specdet_detector``: ``predict`` takes arrays (HxW, HxWx3, HxWx4 uint8) or encoded bytes."""

    def __init__(self, library: str | os.PathLike, artifact: str | os.PathLike, **options: int | str):
        self._handle = None
        self._lib = load_library(library)
        handle = ctypes.c_void_p()
        opts = ctypes.c_void_p()
        self._check(self._lib.specdet_options_create(ctypes.byref(opts)))
        try:
            for key, value in options.items():
                if isinstance(value, str):
                    self._check(self._lib.specdet_options_set_string(opts, key.encode(), value.encode()))
                else:
                    self._check(self._lib.specdet_options_set_int(opts, key.encode(), int(value)))
            self._check(self._lib.specdet_detector_create(str(Path(artifact)).encode(), opts, ctypes.byref(handle)))
        finally:
            self._lib.specdet_options_destroy(opts)
        self._handle = handle
        self.threshold = self._threshold()
        self.input_size = self.get_int("input_size")

    def close(self) -> None:
        if self._handle:
            self._lib.specdet_detector_destroy(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def _check(self, status: int) -> None:
        if status != OK:
            raise RuntimeError_(status, self._lib.specdet_last_error().decode())

    def _threshold(self) -> float:
        value = ctypes.c_double()
        self._check(self._lib.specdet_detector_threshold(self._handle, ctypes.byref(value)))
        return value.value

    def get_int(self, key: str) -> int:
        value = ctypes.c_int64()
        self._check(self._lib.specdet_detector_get_int(self._handle, key.encode(), ctypes.byref(value)))
        return value.value

    def get_string(self, key: str) -> str:
        length = ctypes.c_size_t()
        self._lib.specdet_detector_get_string(self._handle, key.encode(), None, 0, ctypes.byref(length))
        buffer = ctypes.create_string_buffer(length.value + 1)
        self._check(self._lib.specdet_detector_get_string(self._handle, key.encode(), buffer, len(buffer), None))
        return buffer.value.decode()

    def _image(self, source: np.ndarray | bytes, keep: list) -> ctypes.c_void_p:
        image = ctypes.c_void_p()
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
            keep.append(data)
            self._check(self._lib.specdet_image_create_encoded(data, len(data), ctypes.byref(image)))
            return image
        array = np.asarray(source)
        if array.dtype != np.uint8:
            raise SpecdetError(f"pixels must be uint8, not {array.dtype}")
        channels = 1 if array.ndim == 2 else array.shape[2]
        fmt = {1: PIXELS_GRAY8, 3: PIXELS_RGB8, 4: PIXELS_RGBA8}[channels]
        # Rows may be padded (any positive row stride); within a row, pixels must be packed.
        packed = (channels, 1) if array.ndim == 3 else (1,)
        if array.strides[1:] != packed or array.strides[0] <= 0:
            array = np.ascontiguousarray(array)
        keep.append(array)
        self._check(self._lib.specdet_image_create_pixels(
            array.ctypes.data, array.shape[1], array.shape[0], array.strides[0], fmt, ctypes.byref(image)))
        return image

    def preprocess(self, source: np.ndarray | bytes) -> np.ndarray:
        keep: list = []
        image = self._image(source, keep)
        try:
            out = np.empty(self.input_size, dtype=np.float32)
            self._check(self._lib.specdet_detector_preprocess(self._handle, image, out.ctypes.data, out.size))
        finally:
            self._lib.specdet_image_destroy(image)
        crop = self.get_int("crop")
        return out.reshape(3, crop, crop)

    def score(self, sources: Sequence[np.ndarray | bytes]) -> dict[str, np.ndarray]:
        """``{"probability", "logit", "label", "status"}`` arrays; unreadable images have a non-zero status."""
        keep: list = []
        images = [self._image(s, keep) for s in sources]
        try:
            n = len(images)
            handles = (ctypes.c_void_p * max(n, 1))(*[i.value for i in images])
            out = {"probability": np.empty(n, np.float32), "logit": np.empty(n, np.float32),
                   "label": np.empty(n, np.int32), "status": np.empty(n, np.int32)}
            self._check(self._lib.specdet_detector_score(
                self._handle, handles, n, *(out[k].ctypes.data for k in ("probability", "logit", "label", "status")), n))
            return out
        finally:
            for image in images:
                self._lib.specdet_image_destroy(image)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run preprocessed float32 ``[N, 3, crop, crop]`` tensors: ``{"logit", "probability"}``, as a Runner's _infer."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        out = {"probability": np.empty(n, np.float32), "logit": np.empty(n, np.float32)}
        self._check(self._lib.specdet_detector_infer(self._handle, batch.ctypes.data, batch.size, n,
                                                     out["probability"].ctypes.data, out["logit"].ctypes.data, None, n))
        return out

    def predict(self, sources: Sequence[np.ndarray | bytes]) -> np.ndarray:
        """Probabilities; the first unreadable image raises."""
        result = self.score(sources)
        bad = np.flatnonzero(result["status"])
        if bad.size:
            raise RuntimeError_(int(result["status"][bad[0]]), self._lib.specdet_last_error().decode())
        return result["probability"]
