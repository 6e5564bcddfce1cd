"""The ``openvino`` backend: OpenVINO's own runtime runs an exported ``.onnx`` file as its manifest describes.

OpenVINO reads the ONNX file directly (no conversion step, no second
artifact), so the manifest inside it is the one the other backends read.
Options: ``inference_precision``, OpenVINO's ``INFERENCE_PRECISION_HINT``
(``f32``, or ``bf16`` on CPUs with BF16 instructions: AVX-512 BF16 or AMX);
and ``threads``, its ``INFERENCE_NUM_THREADS``. What the compiled model settled on
is readable back (:attr:`OpenVinoRunner.inference_precision`,
:attr:`OpenVinoRunner.threads`), so benchmarks record what ran, not what was
asked for.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from specdet.errors import SpecdetError
from specdet.manifest import OUTPUT_NAMES
from specdet.runtime.base import ArtifactInfo, Runner, RunnerOptions, read_manifest

# What ``inference_precision`` takes (and --inference-precision). f32 is the default, not OpenVINO's own:
# on a BF16 CPU OpenVINO would otherwise run BF16 unasked and score
# differently (|dp| ~1e-3) from every other backend on the same file.
INFERENCE_PRECISIONS = ("f32", "bf16")
DEVICE = "CPU"


def _import_openvino():
    try:
        import openvino
    except ImportError as err:
        raise SpecdetError(
            "the openvino backend needs OpenVINO, which is not installed: pip install 'specdet[openvino]'"
        ) from err
    return openvino


class OpenVinoRunner(Runner):
    name = "openvino"
    OPTIONS = ("inference_precision",)

    @classmethod
    def check_options(cls, options: RunnerOptions) -> None:
        super().check_options(options)
        wanted = options.inference_precision
        if wanted is not None and wanted not in INFERENCE_PRECISIONS:
            raise SpecdetError(
                f"the openvino backend has no inference precision {wanted!r}: choose {' or '.join(INFERENCE_PRECISIONS)}"
            )

    def __init__(self, artifact: str | os.PathLike, options: RunnerOptions):
        inference_precision = options.inference_precision or "f32"
        ov = _import_openvino()
        path = Path(artifact)
        manifest = read_manifest(path, options)
        core = ov.Core()
        if inference_precision == "bf16" and "BF16" not in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"):
            raise SpecdetError(
                "this CPU has no BF16 instructions (avx512_bf16 or amx_bf16) for OpenVINO to use: "
                "use --inference-precision f32"
            )
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": inference_precision}
        if options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = options.threads
        self._compiled = _compile(core, path, config, manifest.fft_mode)
        _check_names(path, self._compiled, manifest.input.name)
        # One infer request serves every caller, one at a time: a request is not
        # thread-safe, and OpenVINO already spreads one request over its threads.
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self._input_name = manifest.input.name
        super().__init__(path, ArtifactInfo.from_manifest(manifest))

    @property
    def compiled_model(self) -> Any:
        """The ``openvino.CompiledModel`` this runner calls (its properties: precision, threads, streams)."""
        self.ensure_open()
        return self._compiled

    @property
    def inference_precision(self) -> str:
        """The precision the compiled model computes in (``f32`` or ``bf16``), as OpenVINO reports it."""
        return self.compiled_model.get_property("INFERENCE_PRECISION_HINT").to_string()

    @property
    def threads(self) -> int:
        """The threads OpenVINO runs a request on (its own choice when none was asked for)."""
        return int(self.compiled_model.get_property("INFERENCE_NUM_THREADS"))

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self._request.infer({self._input_name: batch})
            # Copies: the request's output tensors are overwritten by the next call.
            return {name: self._request.get_tensor(name).data.copy() for name in OUTPUT_NAMES}

    def _close(self) -> None:
        # OpenVINO frees the compiled model (weights, its thread pool's buffers) with its last reference.
        del self._request, self._compiled


def _compile(core: Any, path: Path, config: dict[str, Any], fft_mode: str | None) -> Any:
    try:
        model = core.read_model(str(path))
        _check_finite_constants(path, model)
        return core.compile_model(model, DEVICE, config)
    except RuntimeError as err:  # OpenVINO's errors are RuntimeErrors with a multi-line trace in the text
        lines = [line.strip(" -") for line in str(err).splitlines() if line.strip(" -")]
        reason = lines[-1] if lines else type(err).__name__
        # OpenVINO 2026.4 fails to convert our DFT-node files (a shape mismatch after its DFT) and has no
        # plugin ops; the matrix-product FFTs are plain MatMuls it runs.
        fix = "re-export it with detect-export --fft matmul" if fft_mode in ("dft", "plugin") else "re-export it"
        raise SpecdetError(f"OpenVINO cannot load {path} ({reason}): {fix}") from err


def _check_finite_constants(path: Path, model: Any) -> None:
    """Refuse weights that hold NaN or an infinity: OpenVINO's ReLU turns a NaN into 0, so such a file scores
    finite, constant, wrong probabilities here, where ONNX Runtime scores NaN (a per-image error)."""
    broken = []
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or not op.get_element_type().is_real():
            continue
        data = op.get_data()  # a view of the weights, not a copy
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            broken.append(op.get_friendly_name())
    if broken:
        raise SpecdetError(f"{path.name}: {len(broken)} weight tensor(s) ({', '.join(broken[:3])}) hold NaN or "
                           "infinite values, so no score would be right: re-export it from a good checkpoint")


def _check_names(path: Path, compiled: Any, input_name: str) -> None:
    # A port carries every name of the tensor OpenVINO fused into it (an FP16 file's casts of the input too).
    inputs = [sorted(port.get_names()) for port in compiled.inputs]
    outputs = {name for port in compiled.outputs for name in port.get_names()}
    if len(inputs) != 1 or input_name not in inputs[0] or not outputs.issuperset(OUTPUT_NAMES):
        raise SpecdetError(
            f"{path.name} (inputs {inputs}, outputs {sorted(outputs)}) does not match its manifest "
            f"(input {input_name!r}, outputs {list(OUTPUT_NAMES)}): re-export it with detect-export"
        )
