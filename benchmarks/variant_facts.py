"""What exactly runs, for the row that reports a variant: library versions, provider, precision, FFT mode, threads."""

from __future__ import annotations

import functools
import importlib
import json
import time
from typing import Any

from specdet.benchmarks.variants import Variant
from specdet.runtime import Runner


def describe(variant: Variant, runner: Runner, threads: int | None) -> dict[str, Any]:
    """What exactly runs, for the row that reports it."""
    facts = {"backend": variant.backend, "device": variant.device, "threads_requested": threads}
    facts.update(_DESCRIBE.get(variant.name, _DESCRIBE[variant.backend])(variant, runner))
    if variant.precision:
        facts["precision"] = variant.precision
    return facts


def _describe_torch(variant: Variant, runner: Runner) -> dict[str, Any]:
    import torch

    provider = "cpu"
    if variant.device == "cuda":
        provider = f"cuda ({torch.cuda.get_device_name()})"
    fft_mode = "torch.fft"
    if getattr(runner, "_kernels", False):
        from specdet.kernels.torch_ops import method

        fft_mode = f"specdet CUDA kernels (method {method()})"
    return {
        "library": {"torch": torch.__version__},
        "provider": provider,
        "precision": "fp32",
        "fft_mode": fft_mode,
        "cuda_graphs": bool(getattr(runner, "_cuda_graphs", False)),
        "threads": torch.get_num_threads(),
    }


def _describe_onnxruntime(variant: Variant, runner: Runner) -> dict[str, Any]:
    import onnxruntime

    manifest = runner.info.manifest
    session = runner.session
    options = session.get_session_options()
    threads = options.intra_op_num_threads or _physical_cores()  # 0: onnxruntime's default, the physical cores
    return {
        "library": {"onnxruntime": onnxruntime.__version__},
        "provider": ",".join(session.get_providers()),
        "precision": manifest.precision,
        "fft_mode": manifest.fft_mode,
        "threads": threads,
        "graph_optimization": str(options.graph_optimization_level).rsplit(".", 1)[-1],
        "spinning": _config_entry(options, "session.intra_op.allow_spinning", "1 (default)"),
    }


def _config_entry(options, key: str, default: str) -> str:
    try:
        return options.get_session_config_entry(key) or default
    except RuntimeError:  # onnxruntime's answer for a key never set
        return default


def _describe_tensorrt(variant: Variant, runner: Runner) -> dict[str, Any]:
    manifest = runner.info.manifest
    library = manifest.engine.details.get("backend", "tensorrt")
    return {
        # The version comes from engine.library, the allow-listed module name, never from a free-form field.
        "library": {library: manifest.engine.library_version or _version(manifest.engine.library)},
        "provider": library,
        "precision": manifest.precision,
        "fft_mode": manifest.fft_mode,
        "threads": None,
    }


def _describe_openvino(variant: Variant, runner: Runner) -> dict[str, Any]:
    import openvino

    compiled = runner.compiled_model
    manifest = runner.info.manifest
    # What the compiled model computes in (f32 -> fp32, bf16), read back, not what was asked for. An INT8 file
    # runs its quantised ops in INT8 and only the rest in that precision: "int8" or "int8+bf16", against the
    # INT8 peak.
    computes = {"f32": "fp32"}.get(runner.inference_precision, runner.inference_precision)
    if manifest.precision == "int8":
        computes = "int8" if computes == "fp32" else f"int8+{computes}"
    return {
        "library": {"openvino": openvino.__version__},
        "provider": "OpenVINO CPU plugin",
        "precision": computes,
        "artifact_precision": manifest.precision,
        "fft_mode": manifest.fft_mode,
        "threads": runner.threads,
        "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
    }


def _describe_cpp(variant: Variant, runner: Runner) -> dict[str, Any]:
    """As ONNX Runtime's facts, plus the per-image preprocessing cost of C++ and of Python on the sample photos."""
    import onnxruntime

    from specdet.images import sample_photos
    from specdet.runtime.preprocess import preprocess

    detector = runner.detector
    photos = [array for _, array in sample_photos()]
    spec = runner.info.preprocessing
    cost = {}
    for name, one in (("cpp", detector.preprocess), ("python", lambda a: preprocess(a, spec))):
        start = time.perf_counter()
        for array in photos:
            one(array)
        cost[name] = round((time.perf_counter() - start) * 1000 / len(photos), 3)
    manifest = json.loads(detector.get_string("manifest"))
    return {
        "library": {"libspecdet_runtime": str(runner.library), "onnxruntime": onnxruntime.__version__},
        "provider": "CPUExecutionProvider (ONNX Runtime C API, dlopen)",
        "precision": manifest.get("precision", "fp32"),
        "fft_mode": manifest.get("fft_mode"),
        "threads": runner.threads or _physical_cores(),  # 0: ONNX Runtime's default, the physical cores
        "preprocessing_ms_per_image": cost,  # decoded sample photos: resize, crop, normalise
    }


_DESCRIBE = {"torch": _describe_torch, "onnxruntime": _describe_onnxruntime, "openvino": _describe_openvino,
             "tensorrt": _describe_tensorrt,
             "cpp-onnxruntime": _describe_cpp}


@functools.cache
def _physical_cores() -> int:
    from specdet.benchmarks.machine import cpu_info

    return cpu_info()["cores"]


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module.replace("-", "_")).__version__
    except (ImportError, AttributeError):
        return None
