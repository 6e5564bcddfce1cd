"""ONNX artifact to TensorRT engine: the library call behind ``detect-build``.

The network is strongly typed: each tensor keeps the type the ONNX file
gives it, so an FP16 engine comes from an FP16 file (``detect-export
--precision fp16``), never from a builder flag. The optimisation profile
covers the manifest's batch range; the timing cache is read and written back
when given (TensorRT only: TensorRT-RTX tunes at run time); plugin libraries
are loaded and the fallback bodies of the ops they provide stripped
(:mod:`specdet.tensorrt`). The engine's manifest (``model.engine.json``)
copies what the runtime needs from the ONNX manifest and records the
library, its version, the target compute capabilities, precision, profile
and plugins (file name, SHA-256, ops).

The build is a chain of stages (:mod:`.engine_stages`) over one library
(:mod:`.engine_library`, ``tensorrt`` or ``tensorrt_rtx``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from specdet.errors import SpecdetError
from specdet.export.engine_library import ENGINE_LIBRARIES, open_library
from specdet.export.engine_stages import Configure, EngineBuild, LoadAndStrip, Parse, Serialise, WriteManifest
from specdet.files import check_outputs
from specdet.manifest import ENGINE_SUFFIXES, Manifest, engine_sidecar, legacy_onnx_sidecar
from specdet.onnx_external import external_data_files

__all__ = ["ENGINE_LIBRARIES", "DEFAULT_OPT_BATCH", "EngineBuild", "build_engine", "parse_batch"]

# Batch the profile is tuned for when --batch gives no OPT: detect-predict's default batch size.
DEFAULT_OPT_BATCH = 8


def parse_batch(text: str) -> tuple[int, int, int]:
    """``MIN:OPT:MAX`` (or ``MIN:MAX``, or one number for all three) to three batch sizes."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise SpecdetError(f"--batch {text!r} is not MIN:OPT:MAX with whole numbers") from None
    if len(parts) == 1:
        parts = parts * 3
    elif len(parts) == 2:
        parts = [parts[0], min(max(DEFAULT_OPT_BATCH, parts[0]), parts[1]), parts[1]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise SpecdetError(f"--batch {text!r} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


def _profile(manifest: dict, batch: tuple[int, int, int] | None) -> tuple[int, int, int]:
    low, high = int(manifest["batch"]["min"]), int(manifest["batch"]["max"])
    if batch is None:
        return low, min(max(DEFAULT_OPT_BATCH, low), high), high
    if batch[0] < low or batch[2] > high:
        raise SpecdetError(
            f"--batch {batch[0]}:{batch[1]}:{batch[2]} is outside the ONNX file's batch range {low}..{high}: "
            "re-export with a larger --max-batch"
        )
    return batch


def build_engine(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    backend: str | None = None,
    batch: tuple[int, int, int] | None = None,
    timing_cache: str | os.PathLike | None = None,
    plugins: Sequence[str | os.PathLike] = (),
    workspace_mb: int | None = None,
    compute_capabilities: Sequence[str] | None = None,
    verbose: bool = False,
) -> EngineBuild:
    """Build ``onnx_path`` (an exported ``.onnx`` with its manifest) into ``output`` (default: ``.engine`` beside it)."""
    start = time.perf_counter()
    source = Path(onnx_path)
    if not source.is_file():
        raise SpecdetError(f"ONNX file {source} not found")
    manifest = Manifest.read(source).to_dict()
    external_data_files(source)  # the parser would copy whatever file these point at into the engine
    output = Path(output) if output is not None else source.with_suffix(".engine")
    if output.suffix.lower() not in ENGINE_SUFFIXES:
        raise SpecdetError(f"{output.name}: an engine's name must end in .engine or .plan")
    companions = [(output, "engine"), (engine_sidecar(output), "engine manifest")]
    if timing_cache is not None:
        companions.append((timing_cache, "timing cache"))
    legacy = legacy_onnx_sidecar(source)  # an older export's manifest is an input too, where it is used
    check_outputs(companions, inputs=(source, *plugins, *([legacy] if legacy.is_file() else [])))
    profile = _profile(manifest, batch)
    if workspace_mb is not None and workspace_mb < 1:
        raise SpecdetError(f"--workspace must be at least 1 MB, got {workspace_mb}")
    library = open_library(backend, verbose)
    build = WriteManifest(
        Serialise(
            Configure(
                Parse(LoadAndStrip(source, manifest, library, plugins)),
                profile=profile, workspace_mb=workspace_mb, compute_capabilities=compute_capabilities,
                timing_cache=None if timing_cache is None else Path(timing_cache),
            ),
            output,
        ),
        start,
    )
    return build()
