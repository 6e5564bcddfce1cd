"""What runs: a variant is a backend plus options, kept in a registry.

Each variant names the runtime backend it builds on (``torch``,
``onnxruntime``, ``openvino``, ``tensorrt``), the device it runs on, and how to load an
artifact into a :class:`~specdet.runtime.Runner`. The benchmark times
``runner.infer`` the same way for all of them, so a variant is only a way
of building a runner, and a new one is a few lines below.

``torch-fp32`` on the checkpoint is the reference for every accuracy figure.
The other torch variants wrap the torch runner's module: autocast to BF16 or
FP16, ``torch.compile``, or the module on a CUDA device. Variants run on the
artifacts of their backend's file type (``.pth``; ``.onnx`` for onnxruntime
and openvino; ``.engine``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specdet.benchmarks import timing
from specdet.errors import SpecdetError
from specdet.runtime import Runner, create_runner
from specdet.runtime.base import BACKEND_BY_SUFFIX, BACKEND_SUFFIXES, runner_class

if TYPE_CHECKING:  # imported by the torch loaders when they run: torch is not needed to list variants
    from specdet.runtime.torch_runner import TorchRunner

REFERENCE = "torch-fp32"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # key of specdet.runtime.BACKENDS whose artifacts it runs
    device: str  # "cpu" or "cuda"
    summary: str
    load: Callable[[Path, int | None], Runner]  # (artifact, threads) -> runner
    requires: Callable[[], str | None] = lambda: None  # why it cannot run on this machine, or None
    precision: str | None = None  # None: the artifact's own (from its manifest)
    by_name_only: bool = False  # True: a backend token (e.g. "onnxruntime") does not select it, its name does

    @property
    def suffixes(self) -> tuple[str, ...]:
        return BACKEND_SUFFIXES[self.backend]

    def runs(self, artifact: Path) -> bool:
        return artifact.suffix.lower() in self.suffixes


@dataclasses.dataclass
class Loaded:
    """A variant with its artifact loaded, ready to time."""

    variant: Variant
    runner: Runner
    facts: dict[str, Any]  # what exactly runs: library versions, provider, precision, FFT mode, threads
    load_seconds: float
    load_rss_bytes: int | None  # rise of the process's resident set while loading (CPU)

    @property
    def id(self) -> str:
        return f"{self.variant.name}:{self.runner.artifact.name}"

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.runner.input_spec().dtype)

    def clock(self) -> timing.Clock:
        return timing.CudaEventClock() if self.variant.device == "cuda" else timing.MonotonicClock()

    def memory_probe(self) -> timing.MemoryProbe:
        if self.variant.device == "cpu":
            return timing.ProcessRss()
        if self.variant.backend == "torch":
            return timing.CudaAllocator()
        return timing.NoProbe()  # onnxruntime's and TensorRT's GPU memory is outside torch's allocator


# ---- torch --------------------------------------------------------------------


class TorchVariantRunner(Runner):
    """A torch runner's module run another way: on a CUDA device, under autocast, compiled, through our
    kernels (``use_kernels``), or captured once per batch shape as a CUDA graph and replayed."""

    name = "torch"

    def __init__(self, base: TorchRunner, *, device: str = "cpu", autocast: Any = None, compile: bool = False,
                 kernels: bool = False, cuda_graphs: bool = False):
        import torch

        super().__init__(base.artifact, base.info)
        self._torch = torch
        self._device = torch.device(device)
        self._base = base  # owns the module: closed with this runner
        module = base.module.to(self._device)
        self._call = torch.compile(module, dynamic=False) if compile else module
        self._autocast = autocast
        self._kernels = kernels
        if kernels:
            from specdet.kernels.torch_ops import use_kernels

            self._spectral_ops = use_kernels
        else:
            self._spectral_ops = contextlib.nullcontext
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}  # shape -> (graph, input, outputs)
        self._pinned: dict[tuple[int, ...], Any] = {}  # crops shape -> pinned host buffer (_infer_crops)
        self._cuda_graphs = cuda_graphs

    def _forward(self, x):
        torch = self._torch
        # A graph replays the casts it captured; autocast's weight cache would hand it tensors freed after capture.
        cast = (torch.autocast(self._device.type, dtype=self._autocast, cache_enabled=not self._cuda_graphs)
                if self._autocast else contextlib.nullcontext())
        with torch.inference_mode(), cast, self._spectral_ops():
            return self._call(x)

    def _graph(self, shape: tuple[int, ...]):
        """The CUDA graph of one forward at ``shape``: warmed up on a side stream (cuFFT plans, workspaces), then captured."""
        torch = self._torch
        if shape not in self._graphs:
            static = torch.zeros(shape, device=self._device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self._forward(static)
            self._graphs[shape] = (graph, static, outputs)
        return self._graphs[shape]

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(self._torch.from_numpy(batch).to(self._device))

    def _infer_crops(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """On a GPU: the uint8 crops through a pinned buffer to the device (a quarter of the float bytes), normalised
        there (the same float32 values as on the CPU: normalise_tensor)."""
        if self._device.type != "cuda":
            return super()._infer_crops(crops)
        torch = self._torch
        staging = self._pinned.get(crops.shape)
        if staging is None:
            staging = self._pinned[crops.shape] = torch.empty(crops.shape, dtype=torch.uint8, pin_memory=True)
        staging.copy_(torch.from_numpy(crops))
        return self.infer_device_crops(staging.to(self._device, non_blocking=True))

    def infer_device_crops(self, crops) -> dict[str, np.ndarray]:
        """Score uint8 ``[N, crop, crop, 3]`` crops already on this runner's device (GPU decoding)."""
        from specdet.runtime.torch_runner import normalise_tensor

        self.ensure_open()
        return self._run(normalise_tensor(crops, self.info.preprocessing))

    def _run(self, x) -> dict[str, np.ndarray]:
        if self._cuda_graphs:
            graph, static, (logit, probability) = self._graph(tuple(x.shape))
            static.copy_(x)
            graph.replay()
        else:
            logit, probability = self._forward(x)
        return {"logit": logit.float().cpu().numpy(), "probability": probability.float().cpu().numpy()}

    def _close(self) -> None:
        self._graphs.clear()
        self._pinned.clear()
        del self._call
        self._base.close()


def _torch(device: str = "cpu", autocast: str | None = None, compile: bool = False, kernels: bool = False,
           cuda_graphs: bool = False):
    def load(artifact: Path, threads: int | None) -> Runner:
        base = create_runner(artifact, "torch", threads=threads)
        if device == "cpu" and autocast is None and not (compile or kernels or cuda_graphs):
            return base
        import torch

        dtype = getattr(torch, autocast) if autocast else None
        return TorchVariantRunner(base, device=device, autocast=dtype, compile=compile, kernels=kernels,
                                  cuda_graphs=cuda_graphs)

    return load


def _cuda() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA device"


def _compiler() -> str | None:
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "torch.compile (inductor) needs a C++ compiler: apt-get install g++"
    return None


def _cuda_compiler() -> str | None:
    return _cuda() or _compiler()


# ---- onnxruntime --------------------------------------------------------------


def _onnxruntime(*providers: str):
    def load(artifact: Path, threads: int | None) -> Runner:
        return create_runner(artifact, "onnxruntime", threads=threads, providers=list(providers))

    return load


def _onnxruntime_cuda() -> str | None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "this onnxruntime has no CUDA provider: pip install 'specdet[gpu]' on a GPU machine"
    return None


# ---- OpenVINO -----------------------------------------------------------------


def _openvino(precision: str):
    def load(artifact: Path, threads: int | None) -> Runner:
        return create_runner(artifact, "openvino", threads=threads, precision=precision)

    return load


def _openvino_installed() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed: pip install 'specdet[openvino]'"
    return None


def _openvino_bf16() -> str | None:
    missing = _openvino_installed()
    if missing:
        return missing
    import openvino

    # OpenVINO's own answer: BF16 in its CPU capabilities means avx512_bf16 or AMX-BF16 is there and it uses them.
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "this CPU has no BF16 instructions (avx512_bf16 or amx_bf16) for OpenVINO"
    return None


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


# ---- TensorRT -----------------------------------------------------------------


def _engine(cuda_graphs: bool = False):
    def load(artifact: Path, threads: int | None) -> Runner:
        return create_runner(artifact, "tensorrt", threads=threads, cuda_graphs=cuda_graphs)

    return load


def _tensorrt() -> str | None:
    try:
        runner_class("tensorrt")
    except (ImportError, SpecdetError) as err:
        return f"no TensorRT runner here ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return _cuda()


# ---- the C++ runtime (libspecdet_runtime, through its C ABI) -------------------


class CppRunner(Runner):
    """An ``.onnx`` run by libspecdet_runtime (``runtime/cpp``) through its C ABI: ONNX Runtime's C API,
    no Python in the timed call but the ctypes crossing."""

    name = "onnxruntime"

    def __init__(self, artifact: Path, threads: int | None):
        from specdet.manifest import Manifest
        from specdet.runtime.base import ArtifactInfo
        from specdet.runtime.cpp.binding import CppDetector
        from specdet.runtime.cpp.build import build

        self.library = build().library  # cached by source hash: built once per machine
        self.threads = threads
        options = {"intra_op_threads": threads} if threads else {}
        self.detector = CppDetector(self.library, artifact, **options)
        manifest = Manifest.from_dict(json.loads(self.detector.get_string("manifest")), f"{artifact.name} (as C++ read it)")
        super().__init__(artifact, ArtifactInfo.from_manifest(manifest))

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.detector.infer(batch)

    def _close(self) -> None:
        self.detector.close()


def _cpp(artifact: Path, threads: int | None) -> Runner:
    return CppRunner(artifact, threads)


def _cpp_toolchain() -> str | None:
    from specdet.runtime.cpp.build import find_compiler

    if shutil.which("cmake") is None or find_compiler() is None:
        return "building libspecdet_runtime needs cmake and a C++ compiler: apt-get install cmake g++"
    return None


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


# ---- the registry -------------------------------------------------------------

VARIANTS: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name} registered twice")
    VARIANTS[variant.name] = variant
    return variant


for _variant in (
    Variant(REFERENCE, "torch", "cpu", "PyTorch eager, FP32 (the reference)", _torch(), precision="fp32"),
    Variant("torch-autocast-bf16", "torch", "cpu", "PyTorch eager under torch.autocast(bfloat16)",
            _torch(autocast="bfloat16"), precision="autocast-bf16"),
    Variant("torch-compile", "torch", "cpu", "torch.compile (inductor, static shapes), FP32",
            _torch(compile=True), requires=_compiler, precision="fp32"),
    Variant("torch-cuda-fp32", "torch", "cuda", "PyTorch eager on the GPU, FP32", _torch("cuda"),
            requires=_cuda, precision="fp32"),
    Variant("torch-cuda-autocast-fp16", "torch", "cuda", "PyTorch eager on the GPU under autocast(float16)",
            _torch("cuda", autocast="float16"), requires=_cuda, precision="autocast-fp16"),
    Variant("torch-cuda-autocast-bf16", "torch", "cuda", "PyTorch eager on the GPU under autocast(bfloat16)",
            _torch("cuda", autocast="bfloat16"), requires=_cuda, precision="autocast-bf16"),
    Variant("torch-cuda-compile", "torch", "cuda", "torch.compile (inductor) on the GPU, FP32",
            _torch("cuda", compile=True), requires=_cuda_compiler, precision="fp32"),
    Variant("torch-cuda-compile-fp16", "torch", "cuda", "torch.compile (inductor) on the GPU under autocast(float16)",
            _torch("cuda", autocast="float16", compile=True), requires=_cuda_compiler, precision="autocast-fp16"),
    Variant("torch-cuda-kernels", "torch", "cuda", "PyTorch eager on the GPU, FP32, spectral ops in our CUDA kernels",
            _torch("cuda", kernels=True), requires=_cuda, precision="fp32"),
    Variant("torch-cuda-autocast-fp16-kernels", "torch", "cuda",
            "PyTorch eager on the GPU under autocast(float16), spectral ops in our CUDA kernels",
            _torch("cuda", autocast="float16", kernels=True), requires=_cuda, precision="autocast-fp16"),
    Variant("torch-cuda-compile-fp16-kernels", "torch", "cuda",
            "torch.compile on the GPU under autocast(float16), spectral ops in our CUDA kernels",
            _torch("cuda", autocast="float16", compile=True, kernels=True), requires=_cuda_compiler,
            precision="autocast-fp16"),
    Variant("torch-cuda-graphs-fp16", "torch", "cuda",
            "PyTorch eager on the GPU under autocast(float16), captured per batch shape as a CUDA graph",
            _torch("cuda", autocast="float16", cuda_graphs=True), requires=_cuda, precision="autocast-fp16"),
    Variant("torch-cuda-graphs-fp16-kernels", "torch", "cuda",
            "as torch-cuda-graphs-fp16, spectral ops in our CUDA kernels",
            _torch("cuda", autocast="float16", kernels=True, cuda_graphs=True), requires=_cuda,
            precision="autocast-fp16"),
    Variant("onnxruntime-cpu", "onnxruntime", "cpu", "ONNX Runtime, CPU execution provider",
            _onnxruntime("CPUExecutionProvider")),
    Variant("onnxruntime-cuda", "onnxruntime", "cuda", "ONNX Runtime, CUDA execution provider (CPU for nodes it lacks)",
            _onnxruntime("CUDAExecutionProvider", "CPUExecutionProvider"), requires=_onnxruntime_cuda),
    Variant("cpp-onnxruntime", "onnxruntime", "cpu", "libspecdet_runtime (C++, ONNX Runtime C API) through its C ABI",
            _cpp, requires=_cpp_toolchain, by_name_only=True),  # it builds a library: only when asked for
    Variant("openvino-cpu", "openvino", "cpu", "OpenVINO runtime on the CPU, inference precision f32",
            _openvino("f32"), requires=_openvino_installed),
    Variant("openvino-cpu-bf16", "openvino", "cpu", "OpenVINO runtime on the CPU, inference precision bf16",
            _openvino("bf16"), requires=_openvino_bf16),
    Variant("tensorrt", "tensorrt", "cuda", "TensorRT or TensorRT-RTX engine", _engine(), requires=_tensorrt),
    Variant("tensorrt-cuda-graphs", "tensorrt", "cuda", "TensorRT or TensorRT-RTX engine, replayed as a CUDA graph",
            _engine(cuda_graphs=True), requires=_tensorrt),
):
    register(_variant)


def backend_names() -> list[str]:
    return list(dict.fromkeys(v.backend for v in VARIANTS.values()))


def parse_selection(text: str) -> list[str]:
    """``"torch,onnxruntime-cpu"`` to its tokens, each a backend or a variant name; unknown ones are an error."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise SpecdetError("--backends is empty: name backends or variants, e.g. torch,onnxruntime")
    for token in tokens:
        if token not in VARIANTS and token not in backend_names():
            raise SpecdetError(
                f"unknown backend {token!r}: choose backends ({', '.join(backend_names())}) "
                f"or variants ({', '.join(VARIANTS)})"
            )
    return tokens


def select(tokens: Sequence[str], checkpoint: Path, artifacts: Sequence[Path], *, strict: bool) -> list[tuple[Variant, Path]]:
    """The (variant, artifact) pairs to run.

    A backend name stands for each of its variants that can run here; a
    variant name for itself. Torch variants run on ``checkpoint``, the others
    on the ``artifacts`` of their file type. With ``strict``, a token that
    yields nothing is an error saying why; without, it is dropped.
    """
    pairs: list[tuple[Variant, Path]] = []
    for token in tokens:
        named = ([VARIANTS[token]] if token in VARIANTS
                 else [v for v in VARIANTS.values() if v.backend == token and not v.by_name_only])
        found, reasons = [], []
        for variant in named:
            reason = variant.requires()
            if reason:
                reasons.append(f"{variant.name}: {reason}")
                continue
            targets = [checkpoint] if variant.backend == "torch" else [a for a in artifacts if variant.runs(a)]
            if not targets:
                reasons.append(f"{variant.name} runs {'/'.join(variant.suffixes)} files and none was given")
            found += [(variant, a) for a in targets]
        if not found and strict:
            raise SpecdetError(f"--backends {token} has nothing to run: {'; '.join(reasons)}")
        pairs += [p for p in found if p not in pairs]
    return pairs


def why_not(artifact: Path, tokens: Sequence[str]) -> str:
    """Why none of ``tokens`` runs ``artifact``: the variants for its kind that cannot run here, or none named."""
    kind = [v for v in VARIANTS.values() if v.runs(artifact)]
    named = [v for v in kind if v.name in tokens or v.backend in tokens]
    if not named:
        return f"--backends names none of {', '.join(v.name for v in kind if not v.by_name_only)}"
    return "; ".join(f"{v.name}: {v.requires()}" for v in named if v.requires())


def load(variant: Variant, artifact: Path, threads: int | None) -> Loaded:
    before = timing.current_rss()
    start = time.perf_counter()
    runner = variant.load(artifact, threads)
    seconds = time.perf_counter() - start
    after = timing.current_rss()
    rss = None if variant.device != "cpu" or before is None or after is None else max(0, after - before)
    return Loaded(variant, runner, describe(variant, runner, threads), seconds, rss)


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


def artifact_kind(path: os.PathLike) -> str | None:
    """The backend whose runner takes ``path`` by its suffix, or None."""
    return BACKEND_BY_SUFFIX.get(Path(path).suffix.lower())
