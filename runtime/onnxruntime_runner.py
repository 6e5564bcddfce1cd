"""The ``onnxruntime`` backend: runs an exported ``.onnx`` file as its manifest describes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from specdet.errors import SpecdetError
from specdet.manifest import OUTPUT_NAMES, TensorSpec
from specdet.runtime.base import ArtifactInfo, Runner, RunnerOptions, read_manifest

# ONNX Runtime logs warnings (unused initialisers, provider fallbacks) to
# stderr; a command's stderr is for the user, so only errors get through.
_LOG_ERRORS_ONLY = 3
# onnxruntime's input type names -> the manifest's numpy dtype names.
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(double)": "float64", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    OPTIONS = ("providers",)

    def __init__(self, artifact: str | os.PathLike, options: RunnerOptions):
        path = Path(artifact)
        manifest = read_manifest(path, options)
        self._session = _session(path, options.threads, manifest.ort_optimization, _providers(options.providers))
        _check_io(path, self._session, manifest.input)
        self._input_name = manifest.input.name
        super().__init__(path, ArtifactInfo.from_manifest(manifest))

    @property
    def uses_gpu(self) -> bool:
        return any(name != "CPUExecutionProvider" for name in self._session.get_providers())

    @property
    def session(self) -> ort.InferenceSession:
        """The ``onnxruntime.InferenceSession`` this runner calls (its options, providers, profiling)."""
        self.ensure_open()
        return self._session

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        logit, probability = self._session.run(list(OUTPUT_NAMES), {self._input_name: batch})
        return {"logit": logit, "probability": probability}

    def _close(self) -> None:
        # ONNX Runtime frees a session (its arena, its CUDA memory) when the last reference goes.
        del self._session


def _providers(requested: Sequence[str] | None) -> list[str]:
    """The execution providers to ask for: ``requested`` (checked), else CUDA when this build has it, then CPU."""
    available = ort.get_available_providers()
    if requested is None:
        # CPU stays behind CUDA for any node CUDA lacks (DFT among them).
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    names = [requested] if isinstance(requested, str) else list(requested)
    unknown = [p for p in names if p not in available]
    if not names or unknown:
        raise SpecdetError(
            f"onnxruntime {ort.__version__} has no execution provider {', '.join(map(repr, unknown)) or '(none given)'}:"
            f" choose from {', '.join(available)}"
        )
    return names


def _session(path: Path, threads: int | None, level: str, providers: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = _LOG_ERRORS_ONLY
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own untyped-in-Python errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecdetError(f"{path} is not an ONNX model onnxruntime can load ({reason}): re-export it") from err


def _check_io(path: Path, session: ort.InferenceSession, spec: TensorSpec) -> None:
    input_name = spec.name
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    if inputs != [input_name] or not outputs.issuperset(OUTPUT_NAMES):
        raise SpecdetError(
            f"{path.name} (inputs {inputs}, outputs {sorted(outputs)}) does not match its manifest "
            f"(input {input_name!r}, outputs {list(OUTPUT_NAMES)}): re-export it with detect-export"
        )
    # The manifest's input dtype and fixed sizes must be the graph's, or every batch fails at run time.
    graph = session.get_inputs()[0]
    dtype = _ORT_TYPES.get(graph.type, graph.type)
    sizes_differ = len(graph.shape) != len(spec.shape) or any(
        isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(graph.shape, spec.shape))
    if dtype != spec.dtype or sizes_differ:
        raise SpecdetError(
            f"{path.name} takes {dtype} {list(graph.shape)} but its manifest says {spec.dtype} {list(spec.shape)}: "
            "re-export it with detect-export"
        )
