"""ONNX artifact to TensorRT engine: the library call behind ``detect-build``.

One code path for both Python packages, ``tensorrt`` (10.x/11.x) and
``tensorrt_rtx`` (TensorRT-RTX): their builder, parser, network and config
APIs match, and the few differences are feature checks, not version
branches (RTX needs compute-capability targets to build ahead of time on a
machine without a GPU; only libraries that have it get an engine-validity
check at load time).

The network is strongly typed: each tensor keeps the type the ONNX file
gives it, so an FP16 engine comes from an FP16 file (``detect-export
--precision fp16``), never from a builder flag. The optimisation profile
covers the manifest's batch range; the timing cache is read and written back
when given (TensorRT only: TensorRT-RTX tunes at run time); plugin libraries are loaded and the fallback bodies of the ops
they provide stripped (:mod:`specdet.tensorrt`). The engine's
manifest (``model.engine.json``) copies what the runtime needs from the ONNX
manifest and records the library, its version, the target compute
capabilities, precision, profile and plugins.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from specdet import tensorrt as trt_plugins

from specdet.errors import SpecdetError
from specdet.files import atomic_write, file_sha256
from specdet.manifest import Manifest, remove_engine_sidecar

# --backend name -> Python module; the first installed one is the default.
ENGINE_LIBRARIES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
LIBRARY_NAMES = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}
# Batch the profile is tuned for when --batch gives no OPT: detect-predict's default batch size.
DEFAULT_OPT_BATCH = 8
# Targets of an ahead-of-time TensorRT-RTX build on a machine without a GPU:
# every Ampere-or-newer capability the library knows (its Turing target
# cannot build FP32 GEMMs). The engine's size does not depend on the count.
AOT_MIN_CAPABILITY = (8, 0)
DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
          "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}
_MEMORY_WORDS = re.compile(r"workspace|out of memory|insufficient memory|memory pool|cudaErrorMemoryAllocation", re.I)


@dataclasses.dataclass
class EngineBuild:
    path: Path
    backend: str
    library_version: str
    precision: str
    profile: dict
    compute_capabilities: list[str] | None
    plugins: list[dict]
    inputs: list[dict]
    outputs: list[dict]
    seconds: float

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def load_backend(backend: str | None = None) -> tuple[str, ModuleType]:
    """``(name, module)`` of ``backend``, or of the first installed one."""
    if backend is not None and backend not in ENGINE_LIBRARIES:
        raise SpecdetError(f"unknown engine backend {backend!r}: choose {' or '.join(ENGINE_LIBRARIES)}")
    for name in [backend] if backend else list(ENGINE_LIBRARIES):
        try:
            return name, importlib.import_module(ENGINE_LIBRARIES[name])
        except ImportError:
            if backend:
                extra = "rtx" if name == "tensorrt-rtx" else "tensorrt"
                raise SpecdetError(
                    f"--backend {name} needs the {ENGINE_LIBRARIES[name]} Python package: pip install 'specdet[{extra}]'"
                ) from None
        except Exception as err:  # an installed package whose libraries do not load
            raise SpecdetError(f"{ENGINE_LIBRARIES[name]} is installed but does not import: {err}") from err
    raise SpecdetError("no TensorRT Python package: pip install 'specdet[rtx]' (TensorRT-RTX, builds on the CPU) "
                       "or 'specdet[tensorrt]' on a machine with an NVIDIA GPU")


def library_name(trt: ModuleType) -> str:
    return LIBRARY_NAMES.get(trt.__name__, trt.__name__)


class CapturingLogger:
    """A TensorRT logger that keeps errors (for one-line reports) and prints warnings when verbose."""

    def __new__(cls, trt: ModuleType, verbose: bool = False):
        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.verbose = verbose

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors.append(str(msg))
                if self.verbose and int(severity) <= int(trt.ILogger.Severity.WARNING):
                    print(f"[{library_name(trt)}] {msg}", flush=True)

        return _Logger()


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


def compute_capability_targets(trt: ModuleType, requested: Sequence[str] | None) -> list | None:
    """The ``ComputeCapability`` targets of a TensorRT-RTX build; ``None`` for libraries without them."""
    if not hasattr(trt, "ComputeCapability"):
        if requested:
            raise SpecdetError(f"--compute-capability is for TensorRT-RTX; {library_name(trt)} builds for the GPU "
                               "it runs on")
        return None
    known = {name: value for name, value in trt.ComputeCapability.__members__.items() if name.startswith("SM")}
    if requested:
        targets = []
        for text in requested:
            key = "SM" + text.lower().removeprefix("sm").replace(".", "").replace("_", "")
            if key not in known:
                raise SpecdetError(
                    f"unknown compute capability {text!r}; {library_name(trt)} {trt.__version__} knows "
                    + ", ".join(_cc_text(n) for n in known)
                )
            targets.append(known[key])
        return targets
    if current_compute_capability() is not None:
        return [trt.ComputeCapability.CURRENT]
    return [v for n, v in known.items() if _cc_tuple(n) >= AOT_MIN_CAPABILITY]


def _cc_tuple(name: str) -> tuple[int, int]:
    digits = name.removeprefix("SM")
    return int(digits[:-1]), int(digits[-1])


def _cc_text(name: str) -> str:
    major, minor = _cc_tuple(name)
    return f"{major}.{minor}"


def current_compute_capability() -> str | None:
    """The compute capability of GPU 0 (``"9.0"``), or ``None`` on a machine without a usable GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"{major}.{minor}"
    except Exception:
        return None
    return None


def _dtype(trt: ModuleType, dtype) -> str:
    return DTYPES.get(str(dtype).split(".")[-1], str(dtype).split(".")[-1].lower())


def _io(trt: ModuleType, tensors) -> list[dict]:
    return [
        {"name": t.name, "shape": ["batch" if i == 0 and d < 0 else int(d) for i, d in enumerate(t.shape)],
         "dtype": _dtype(trt, t.dtype)}
        for t in tensors
    ]


def _check_io(network_io: list[dict], declared: list[dict], what: str, source: str) -> None:
    got = [(t["name"], t["dtype"], t["shape"]) for t in network_io]
    want = [(t["name"], t["dtype"], list(t["shape"])) for t in declared]
    if got != want:
        raise SpecdetError(
            f"{source} parses to a network with {what} {got}, but its manifest says {want}: re-export the ONNX file"
        )


def _parse_errors(parser, trt: ModuleType, source: str, plugin_ops: set[str]) -> SpecdetError:
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        op, node, desc = error.node_operator(), error.node_name(), error.desc()
        if op in plugin_ops:
            return SpecdetError(
                f"{library_name(trt)} cannot import the plugin op specdet.{op} (node {node}) of {source}: no plugin "
                "library provides it and it has no fallback body; pass --plugins LIB or re-export with --fft plugin"
            )
        if op:
            lines.append(f"ONNX op {op} (node {node}) is not supported by {library_name(trt)} {trt.__version__}: {desc}")
        else:
            lines.append(desc)
    return SpecdetError(f"cannot parse {source}: " + ("; ".join(lines[:3]) or "the parser gave no reason"))


def _build_error(logger, trt: ModuleType, workspace_mb: int | None) -> SpecdetError:
    text = " | ".join(logger.errors[-3:])
    if _MEMORY_WORDS.search(text):
        limit = f"--workspace {workspace_mb} MB" if workspace_mb else "the default workspace"
        return SpecdetError(f"not enough workspace to build the engine with {limit}: raise --workspace "
                            f"({library_name(trt)}: {text or 'no detail'})")
    return SpecdetError(f"{library_name(trt)} could not build the engine: {text or 'no error was logged'}")


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
    output = Path(output) if output is not None else source.with_suffix(".engine")
    if output.suffix.lower() not in (".engine", ".plan"):
        raise SpecdetError(f"{output.name}: an engine's name must end in .engine or .plan")
    if output.is_dir():
        raise SpecdetError(f"{output} is a directory; give a file name ending in .engine")
    profile = _profile(manifest, batch)
    if workspace_mb is not None and workspace_mb < 1:
        raise SpecdetError(f"--workspace must be at least 1 MB, got {workspace_mb}")
    backend, trt = load_backend(backend)
    logger = CapturingLogger(trt, verbose)
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
    loaded = trt_plugins.load_plugin_libraries(trt, plugins)
    provided = [op for ops in loaded.values() for op in ops]

    model_bytes, stripped, plugin_op_names = None, [], set()
    if manifest.get("fft_mode") == "plugin" or provided:
        import onnx

        model = onnx.load(str(source))
        plugin_op_names = {n.op_type for n in trt_plugins.plugin_nodes(model)}
        stripped = trt_plugins.strip_plugin_fallbacks(model, provided)
        trt_plugins.check_plugin_ops(model, {op.name for op in provided}, source.name)
        if stripped:
            model_bytes = model.SerializeToString()
        del model

    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model_bytes, str(source)) if model_bytes is not None else parser.parse_from_file(str(source))
    if not ok:
        raise _parse_errors(parser, trt, source.name, plugin_op_names)
    inputs = _io(trt, [network.get_input(i) for i in range(network.num_inputs)])
    outputs = _io(trt, [network.get_output(i) for i in range(network.num_outputs)])
    _check_io(inputs, manifest["inputs"], "inputs", source.name)
    _check_io(outputs, manifest["outputs"], "outputs", source.name)

    config = builder.create_builder_config()
    shapes = {}
    optimization = builder.create_optimization_profile()
    for tensor in inputs:
        rest = [int(d) for d in tensor["shape"][1:]]
        shapes[tensor["name"]] = {key: [b, *rest] for key, b in zip(("min", "opt", "max"), profile)}
        optimization.set_shape(tensor["name"], *[tuple(s) for s in shapes[tensor["name"]].values()])
    config.add_optimization_profile(optimization)
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    targets = compute_capability_targets(trt, compute_capabilities)
    if targets is not None:
        config.num_compute_capabilities = len(targets)
        for i, target in enumerate(targets):
            if not config.set_compute_capability(target, i):
                raise SpecdetError(f"{library_name(trt)} refused the compute capability target {target}")
    cache = None
    # TensorRT-RTX chooses kernels when the engine first runs (its runtime
    # cache), not at build time: its timing-cache calls are no-ops since 1.2.
    cache_used = timing_cache is not None and trt.__name__ != "tensorrt_rtx"
    if cache_used:
        cache_path = Path(timing_cache)
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise SpecdetError(f"timing cache {cache_path} does not match {library_name(trt)} {trt.__version__} "
                               "or this device: delete it or pass another --timing-cache")

    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise _build_error(logger, trt, workspace_mb)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda file, data=engine: file.write(memoryview(data)))
    del engine  # a full-size engine is hundreds of MB
    if cache is not None:
        serialized = config.get_timing_cache().serialize()
        atomic_write(Path(timing_cache), lambda file: file.write(memoryview(serialized)))

    capabilities = None
    if targets is not None:
        capabilities = [
            (current_compute_capability() or "current") if t == trt.ComputeCapability.CURRENT else _cc_text(t.name)
            for t in targets
        ]
    plugin_records = [
        {"path": str(Path(p).resolve()), "sha256": file_sha256(Path(p)), "ops": [dataclasses.asdict(op) for op in ops]}
        for p, ops in loaded.items()
    ]
    seconds = time.perf_counter() - start
    precision = manifest.get("precision", "fp32")
    engine_section = {
        "backend": backend,
        "library": trt.__name__,
        "library_version": trt.__version__,
        "strongly_typed": True,
        "compute_capabilities": capabilities,
        "build_device": current_compute_capability(),
        "profile": {"batch": dict(zip(("min", "opt", "max"), profile)), "shapes": shapes},
        "plugins": plugin_records,
        "plugin_ops_stripped": stripped,
        "plugin_ops_inlined": sorted(plugin_op_names - set(stripped)),
        "workspace_mb": workspace_mb,
        "timing_cache": (str(Path(timing_cache).resolve()) if cache_used else
                         "ignored: TensorRT-RTX has no build-time timing cache" if timing_cache is not None else None),
        "build_seconds": round(seconds, 3),
        "size_bytes": output.stat().st_size,
    }
    carried = {k: v for k, v in manifest.items() if k not in ("artifact", "parent", "validation")}
    try:
        Manifest.from_dict({
            **carried,
            "inputs": inputs,
            "outputs": outputs,
            "batch": {"min": profile[0], "max": profile[2]},
            "precision": precision,
            "engine": engine_section,
            "parent": {"path": str(source.resolve()), "sha256": file_sha256(source), "parent": manifest.get("parent")},
            "onnx_validation": manifest.get("validation"),
            "artifact": output.name,
        }).write(output)
    except BaseException:
        output.unlink(missing_ok=True)
        remove_engine_sidecar(output)
        raise
    return EngineBuild(
        path=output, backend=backend, library_version=trt.__version__, precision=precision,
        profile=engine_section["profile"], compute_capabilities=capabilities, plugins=plugin_records,
        inputs=inputs, outputs=outputs, seconds=seconds,
    )
