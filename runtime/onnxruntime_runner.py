"""The ``onnxruntime`` backend: runs an exported ``.onnx`` file as its manifest describes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from specdet.errors import SpecdetError
from specdet.manifest import read_manifest
from specdet.runtime.base import OUTPUT_NAMES, ArtifactInfo, Runner, require_file

# ONNX Runtime logs warnings (unused initialisers, provider fallbacks) to
# stderr; a command's stderr is for the user, so only errors get through.
_LOG_ERRORS_ONLY = 3


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, artifact: str | os.PathLike, *, arch: str | None = None, threads: int | None = None):
        path = require_file(artifact)
        manifest = read_manifest(path)
        if arch is not None and arch != manifest["architecture"]:
            raise SpecdetError(f"{path.name} holds a {manifest['architecture']} model, not {arch}: drop --arch")
        self._session = _session(path, threads, manifest.get("precision", "fp32"))
        (spec,) = manifest["inputs"]
        self._input_name = spec["name"]
        _check_names(path, self._session, self._input_name)
        super().__init__(path, ArtifactInfo.from_manifest(manifest))

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        logit, probability = self._session.run(list(OUTPUT_NAMES), {self._input_name: batch})
        return {"logit": logit, "probability": probability}


def _session(path: Path, threads: int | None, precision: str = "fp32") -> ort.InferenceSession:
    options = ort.SessionOptions()
    # ONNX Runtime's layout optimizer (the level above EXTENDED) crashes on
    # FP16 graphs (seen with 1.32 on the CPU): FP16 files stop below it.
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if precision == "fp16" else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.log_severity_level = _LOG_ERRORS_ONLY
    if threads is not None:
        options.intra_op_num_threads = threads
    # CUDA when this onnxruntime build has it (the onnxruntime-gpu package),
    # with the CPU provider behind it for any node CUDA lacks (DFT among them).
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own untyped-in-Python errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecdetError(f"{path} is not an ONNX model onnxruntime can load ({reason}): re-export it") from err


def _check_names(path: Path, session: ort.InferenceSession, input_name: str) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    if inputs != [input_name] or not outputs.issuperset(OUTPUT_NAMES):
        raise SpecdetError(
            f"{path.name} (inputs {inputs}, outputs {sorted(outputs)}) does not match its manifest "
            f"(input {input_name!r}, outputs {list(OUTPUT_NAMES)}): re-export it with detect-export"
        )
