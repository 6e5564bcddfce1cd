"""The manifest: a JSON file beside each exported artifact that says how to run it.

``model.onnx`` has ``model.json`` (same stem); an engine ``model.engine`` has
``model.engine.json``. The runtime and the benchmarks
read everything they need from it (input size, preprocessing, threshold,
batch range) instead of importing training code. Keys::

    format, version        "specdet-manifest", 1
    artifact               file name of the artifact it describes
    architecture, config   the model, as in the parent checkpoint
    preprocessing          same dict as the checkpoint's (see specdet.runtime.preprocess)
    threshold              probability at or above which an image is called fake
    inputs, outputs        [{"name", "shape", "dtype"}]; "batch" stands for the batch axis
    batch                  {"min", "max"}
    fft_mode, precision, opset, parent {"path", "sha256"}, versions, validation, metadata
                           provenance, written by the exporter
    fp32_islands, fp16     FP16 files: the nodes left in FP32 (name, reason, nodes) and the
                           measured agreement with the FP32 file (specdet.export.fp16)
    engine                 engines: backend, library version, compute capabilities, profile,
                           plugins, build time (specdet.export.engine)

Only the keys the runtime needs are required on read; the provenance keys
may grow without breaking older readers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from specdet.errors import SpecdetError
from specdet.files import atomic_write

FORMAT = "specdet-manifest"
VERSION = 1
REQUIRED_KEYS = (
    "format",
    "version",
    "artifact",
    "architecture",
    "preprocessing",
    "threshold",
    "inputs",
    "outputs",
    "batch",
)


# Engines sit beside the ONNX file they were built from: ``model.engine`` has
# ``model.engine.json``, so that it does not replace ``model.json``.
ENGINE_SUFFIXES = (".engine", ".plan")


def manifest_path(artifact: str | os.PathLike) -> Path:
    path = Path(artifact)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return path.with_name(path.name + ".json")
    return path.with_suffix(".json")


def write_manifest(artifact: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write the manifest of ``artifact`` atomically; ``format``, ``version`` and
    ``artifact`` are filled in unless given. Returns the manifest's path."""
    data = {"format": FORMAT, "version": VERSION, "artifact": Path(artifact).name, **data}
    path = manifest_path(artifact)
    _check(path, data)
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))
    return path


def read_manifest(artifact: str | os.PathLike) -> dict[str, Any]:
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if not path.is_file():
        raise SpecdetError(f"no manifest {path.name} beside {artifact.name}: re-export it with detect-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SpecdetError(f"{path} is not valid JSON ({err}): re-export {artifact.name} with detect-export") from err
    _check(path, data)
    return data


def _check(path: Path, data: Any) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SpecdetError(f"{path} is not a specdet manifest: re-export the artifact with detect-export")
    if data.get("version") != VERSION:
        raise SpecdetError(
            f"{path} is manifest version {data.get('version')!r}; this specdet reads version {VERSION}: "
            "upgrade specdet or re-export the artifact"
        )
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise SpecdetError(f"{path} lacks {', '.join(missing)}: re-export the artifact with detect-export")
