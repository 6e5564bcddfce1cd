"""Checkpoint to ONNX artifact: the library call behind ``detect-export``.

Loads a checkpoint, exports its detector (image in; ``logit`` and
``probability`` out) with :func:`export_onnx`, and writes the manifest beside
the ONNX file with everything the runtime needs to serve it without the
checkpoint: preprocessing, threshold, I/O, batch range, FFT mode, parent hash
and library versions.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import torch

from specdet import checkpoint as checkpoints
from specdet.export.onnx import DEFAULT_OPSET, ExportResult, export_onnx
from specdet.manifest import manifest_path, write_manifest
from specdet.models import ScoringModule

INPUT_NAME = "image"
OUTPUT_NAMES = ("logit", "probability")
_VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime", "timm", "transformers", "specdet")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    fft: str = "auto",
    opset: int = DEFAULT_OPSET,
    max_batch: int = 32,
    progress: bool = True,
) -> ExportResult:
    """Export ``checkpoint`` to ``output`` (default: the checkpoint's name with ``.onnx``) plus its manifest."""
    loaded = checkpoints.load(checkpoint, arch=arch)
    output = Path(output) if output is not None else Path(checkpoint).with_suffix(".onnx")
    crop = int(loaded.preprocessing["crop"])
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(min(2, max_batch), 3, crop, crop, generator=generator)
    result = export_onnx(
        ScoringModule(loaded.model), output, example_input=example, fft=fft, opset=opset, max_batch=max_batch,
        input_name=INPUT_NAME, output_names=OUTPUT_NAMES, progress=progress,
    )
    try:
        write_manifest(output, {
            "architecture": loaded.architecture,
            "config": loaded.config,
            "preprocessing": loaded.preprocessing,
            "threshold": loaded.threshold,
            "inputs": [{"name": INPUT_NAME, "shape": ["batch", 3, crop, crop], "dtype": "float32"}],
            "outputs": [{"name": name, "shape": ["batch"], "dtype": "float32"} for name in OUTPUT_NAMES],
            "batch": {"min": 1, "max": max_batch},
            "fft_mode": result.fft,
            "precision": "fp32",
            "opset": result.opset,
            "parent": {"path": str(loaded.path), "sha256": loaded.sha256},
            "versions": library_versions(),
            "validation": result.validation.to_dict(),
            "metadata": loaded.metadata,
        })
    except BaseException:
        # An artifact without its manifest cannot be served, and a manifest
        # left from an earlier export would describe a file that is gone.
        output.unlink(missing_ok=True)
        manifest_path(output).unlink(missing_ok=True)
        raise
    return result
