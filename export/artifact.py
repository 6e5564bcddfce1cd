"""Checkpoint to ONNX artifact: the library call behind ``detect-export``.

Loads a checkpoint, exports its detector (image in; ``logit`` and
``probability`` out) with :func:`export_onnx`, and embeds the manifest in the
ONNX file (:class:`~specdet.manifest.Manifest`) with everything the runtime
needs to serve it without the checkpoint: preprocessing, threshold, I/O,
batch range, FFT mode, parent hash and library versions.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import torch

from specdet.errors import SpecdetError
from specdet.export.onnx import DEFAULT_OPSET, ExportResult, export_onnx
from specdet.files import check_output, file_sha256, partial_path, temporary_folder
from specdet.images import folder_images, sample_photos
from specdet.limits import MAX_CALIBRATION_BYTES
from specdet.manifest import BATCH_AXIS, INPUT_NAME, ONNX_SUFFIX, OUTPUT_NAMES, PRECISIONS, BatchRange, Manifest, TensorSpec
from specdet.models import ScoringModule
from specdet.models import checkpoint as checkpoints
from specdet.onnx_external import external_data_files
from specdet.versions import library_versions


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    fft: str = "auto",
    opset: int = DEFAULT_OPSET,
    max_batch: int = 32,
    precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
    calibration_count: int = 32,
    fp16_tolerance: float | None = None,
    int8_tolerance: float | None = None,
    progress: bool = True,
) -> ExportResult:
    """Export ``checkpoint`` to ``output`` (default: the checkpoint's name with ``.onnx``), manifest inside.

    ``precision="fp16"`` or ``"int8"`` exports and validates in FP32 first,
    then converts (see :func:`convert_to_fp16`, :func:`convert_to_int8`); the
    FP32 file is not kept.
    """
    if precision not in PRECISIONS:
        raise SpecdetError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if output is None:
        name = Path(checkpoint).stem + (f"-{precision}.onnx" if precision != "fp32" else ONNX_SUFFIX)
        output = Path(checkpoint).with_name(name)
    output = _check_onnx_output(output, (checkpoint,))
    if precision != "fp32":
        if precision == "fp16":
            _require_fp16()
        if calibration is not None:  # before the FP32 export: a wrong folder should not cost one
            folder_images(Path(calibration))
        start = time.perf_counter()
        work = temporary_folder(output)
        fp32 = work / f"{output.stem}.fp32.onnx"
        try:
            result = export_checkpoint(checkpoint, fp32, arch=arch, fft=fft, opset=opset, max_batch=max_batch,
                                       progress=progress)
            exported = time.perf_counter()
            convert, tolerance = ((convert_to_fp16, fp16_tolerance) if precision == "fp16"
                                  else (convert_to_int8, int8_tolerance))
            converted = convert(fp32, output, calibration=calibration, count=calibration_count,
                                tolerance=tolerance, progress=progress, keep_parent=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        done = time.perf_counter()
        return dataclasses.replace(result, path=output, precision=converted, seconds=done - start,
                                   stages={"FP32 export": exported - start,
                                           f"{precision.upper()} conversion": done - exported})
    loaded = checkpoints.load(checkpoint, arch=arch)
    crop = int(loaded.preprocessing["crop"])
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(min(2, max_batch), 3, crop, crop, generator=generator)
    result = export_onnx(
        ScoringModule(loaded.model), output, example_input=example, fft=fft, opset=opset, max_batch=max_batch,
        input_name=INPUT_NAME, output_names=OUTPUT_NAMES, progress=progress,
    )
    manifest = Manifest(
        artifact=output.name,
        architecture=loaded.architecture,
        config=loaded.config,
        preprocessing=loaded.preprocessing,
        threshold=loaded.threshold,
        inputs=(TensorSpec(INPUT_NAME, (BATCH_AXIS, 3, crop, crop), "float32"),),
        outputs=tuple(TensorSpec(name, (BATCH_AXIS,), "float32") for name in OUTPUT_NAMES),
        batch=BatchRange(1, max_batch),
        fft_mode=result.fft,
        precision="fp32",
        opset=result.opset,
        parent={"path": str(loaded.path), "sha256": loaded.sha256},
        provenance={
            "versions": library_versions(),
            "validation": result.validation.to_dict(),
            "metadata": loaded.metadata,
        },
    )
    try:
        manifest.write(output)
    except BaseException:
        # An ONNX file without its manifest cannot be served.
        output.unlink(missing_ok=True)
        raise
    return result


def _check_onnx_output(output: str | os.PathLike, inputs: tuple[str | os.PathLike, ...]) -> Path:
    """Refuse, before any work, an ONNX output that is an input or would not be read as ONNX.

    The suffix matters: the runtimes choose the backend by it, and a manifest
    written for ``x.engine`` goes to a sidecar instead of into the file.
    """
    output = check_output(output, "ONNX file", inputs=inputs)
    if output.suffix.lower() != ONNX_SUFFIX:
        raise SpecdetError(f"{output.name}: an exported file's name must end in {ONNX_SUFFIX}: give -o NAME{ONNX_SUFFIX}")
    return output


def _require_fp16() -> None:
    from specdet.export.precision.fp16 import require_converter

    require_converter()


def convert_to_fp16(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    calibration: str | os.PathLike | None = None,
    count: int = 32,
    tolerance: float | None = None,
    progress: bool = True,
    keep_parent: bool = True,
):
    """An exported FP32 ``.onnx`` to a mixed-precision FP16 ``.onnx``, each with its manifest inside.

    FP32 islands are chosen by measurement on calibration images (``calibration``:
    a folder, ``count`` images spread over it; default: scikit-image's sample
    photos). Returns the :class:`~specdet.export.precision.fp16.Fp16Report`,
    also written into the manifest (``fp32_islands``, ``fp16``).
    ``keep_parent=False`` when the FP32 file is a temporary (the manifest then
    names the checkpoint as parent).
    """
    from specdet.export.precision import fp16

    _require_fp16()
    return _convert(onnx_path, output, "fp16", calibration=calibration, count=count, progress=progress,
                    keep_parent=keep_parent,
                    convert=lambda model, **kw: fp16.to_fp16(
                        model, tolerance=fp16.DEFAULT_TOLERANCE if tolerance is None else tolerance, **kw))


def convert_to_int8(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    calibration: str | os.PathLike | None = None,
    count: int = 32,
    tolerance: float | None = None,
    progress: bool = True,
    keep_parent: bool = True,
):
    """An exported FP32 ``.onnx`` to an INT8 QDQ ``.onnx``, each with its manifest inside.

    Calibration images and ``keep_parent`` as for :func:`convert_to_fp16`;
    FP32 islands chosen by measurement (see :mod:`specdet.export.precision.int8`).
    Returns the :class:`~specdet.export.precision.int8.Int8Report`, also written into the
    manifest (``fp32_islands``, ``int8``).
    """
    from specdet.export.precision import int8

    if tolerance is not None and not 0.0 < tolerance <= 1.0:
        raise SpecdetError(f"the INT8 tolerance is a probability difference in (0, 1], got {tolerance:g}")
    return _convert(onnx_path, output, "int8", calibration=calibration, count=count, progress=progress,
                    keep_parent=keep_parent,
                    convert=lambda model, **kw: int8.to_int8(
                        model, tolerance=int8.DEFAULT_TOLERANCE if tolerance is None else tolerance, **kw))


def _convert(onnx_path, output, precision: str, *, calibration, count: int, progress: bool, keep_parent: bool,
             convert):
    """The steps both conversions share: read and check the FP32 file, calibrate, ``convert(model, ...)``
    (returns the new model and its report), embed the manifest with the report, write atomically."""
    import onnx

    source = Path(onnx_path)
    output = _check_onnx_output(output if output is not None else source.with_name(f"{source.stem}-{precision}.onnx"),
                                (source,))
    manifest = Manifest.read(source)
    external_data_files(source)  # before onnx.load follows them
    if manifest.precision != "fp32":
        raise SpecdetError(f"{source.name} is already {manifest.precision}: convert its FP32 export")
    batches, description = calibration_batches(manifest, calibration, count)
    model = onnx.load(str(source))
    converted, report = convert(model, batches=batches, input_name=manifest.input.name, threshold=manifest.threshold,
                                calibration=description, progress=_progress_printer(progress, precision))
    del model
    parent = {"path": str(source), "sha256": file_sha256(source)} if keep_parent else manifest.parent
    dataclasses.replace(
        manifest,
        artifact=output.name,
        precision=precision,
        parent=parent,
        provenance={
            **manifest.provenance,
            "fp32_islands": report.island_summary(),
            precision: {k: v for k, v in report.to_dict().items() if k != "islands"},
            "versions": library_versions(),
        },
    ).embed(converted)  # replaces the FP32 manifest the converted model still carries
    _save_checked(converted, output)
    return report


def _save_checked(model, output: Path) -> None:
    """Write ``model`` to ``output`` atomically, after ONNX's full check: a failure leaves no file behind."""
    import onnx

    tmp = partial_path(output)
    try:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def _progress_printer(enabled: bool, stage: str):
    import sys

    if not enabled:
        return None
    return lambda message: print(f"  {stage}: {message}", file=sys.stderr, flush=True)


def calibration_batches(manifest: Manifest, source: str | os.PathLike | None, count: int):
    """Preprocessed calibration images in batches the artifact accepts, and a description of where they came from."""
    import numpy as np

    from specdet.runtime.preprocess import preprocess

    if source is None:
        images = [array for _, array in sample_photos()]
        description = "scikit-image sample photos"
    else:
        root = Path(source)
        files = folder_images(root)
        crop = manifest.preprocessing["crop"]
        most = max(1, MAX_CALIBRATION_BYTES // (3 * crop * crop * 4))  # float32 pixels, all held for the search
        if min(count, len(files)) > most:
            raise SpecdetError(f"--calibration-count {count} would hold {min(count, len(files))} images of "
                               f"{crop}x{crop} in memory, above the limit of {most} ({MAX_CALIBRATION_BYTES / 2**30:.1f} "
                               f"GiB): give --calibration-count {most} or fewer")
        if count < len(files):  # spread over the folder: every source and class, not the first few
            files = [files[int(i)] for i in np.linspace(0, len(files) - 1, count)]
        images = files
        description = f"{len(files)} images from {root}"
    pixels = preprocess(images, manifest.preprocessing)
    step = max(1, min(8, manifest.batch.max))
    return [pixels[i : i + step] for i in range(0, len(pixels), step)], description
