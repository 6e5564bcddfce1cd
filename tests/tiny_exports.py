"""Tiny detectors exported once per test session, shared by test_precision.py and test_engine.py.

An export of a tiny detector takes seconds on a 2-core CPU; the FP16 tests
the INT8 tests and the engine tests need the same files, so each (model, FFT mode,
precision) is made once, on first use, in one temporary folder.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch

from specdet.export.artifact import convert_to_fp16, convert_to_int8, export_checkpoint
from specdet.models import checkpoint, create_model

MAX_BATCH = 4
_root: Path | None = None
_cache: dict[tuple, Path] = {}


def root() -> Path:
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="specdet-tiny-exports-"))
        atexit.register(shutil.rmtree, _root, ignore_errors=True)
    return _root


def tiny_checkpoint(arch: str) -> Path:
    key = ("pth", arch)
    if key not in _cache:
        torch.manual_seed(0)
        _cache[key] = checkpoint.save(create_model(arch), root() / f"{arch}.pth", threshold=0.5)
    return _cache[key]


def exported(arch: str, fft: str, precision: str = "fp32") -> Path:
    """``ARCH-FFT.onnx`` (FP32), or ``ARCH-FFT-fp16.onnx`` / ``ARCH-FFT-int8.onnx`` (converted from it, scikit-image
    photos)."""
    key = (arch, fft, precision)
    if key not in _cache:
        if precision == "fp32":
            path = root() / f"{arch}-{fft}.onnx"
            export_checkpoint(tiny_checkpoint(arch), path, fft=fft, max_batch=MAX_BATCH, progress=False)
        else:
            path = root() / f"{arch}-{fft}-{precision}.onnx"
            convert = {"fp16": convert_to_fp16, "int8": convert_to_int8}[precision]
            convert(exported(arch, fft), path, progress=False)
        _cache[key] = path
    return _cache[key]
