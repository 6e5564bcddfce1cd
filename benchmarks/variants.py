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

This module is the registry: each variant's loader and what it needs to
run here, and the choice of variants for ``--backends``. The torch variants'
runner is in :mod:`~specdet.benchmarks.torch_variants`, the C++ runtime's in
:mod:`~specdet.benchmarks.cpp_variant`; loading one
(:mod:`~specdet.benchmarks.loading`) records what exactly runs
(:mod:`~specdet.benchmarks.variant_facts`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from specdet.benchmarks.cpp_variant import CppRunner
from specdet.benchmarks.torch_variants import torch_loader
from specdet.errors import SpecdetError
from specdet.runtime import Runner, RunnerOptions, create_runner
from specdet.runtime.base import BACKEND_BY_SUFFIX, BACKEND_SUFFIXES, runner_class

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


# ---- torch (the runner: torch_variants.py) --------------------------------------


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
        return create_runner(artifact, "onnxruntime", RunnerOptions(threads=threads, providers=providers))

    return load


def _onnxruntime_cuda() -> str | None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "this onnxruntime has no CUDA provider: pip install 'specdet[gpu]' on a GPU machine"
    return None


# ---- OpenVINO -----------------------------------------------------------------


def _openvino(inference_precision: str):
    def load(artifact: Path, threads: int | None) -> Runner:
        return create_runner(artifact, "openvino", RunnerOptions(threads=threads, inference_precision=inference_precision))

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


# ---- TensorRT -----------------------------------------------------------------


def _engine(cuda_graphs: bool = False):
    def load(artifact: Path, threads: int | None) -> Runner:
        return create_runner(artifact, "tensorrt", RunnerOptions(threads=threads, cuda_graphs=cuda_graphs))

    return load


def _tensorrt() -> str | None:
    try:
        runner_class("tensorrt")
    except (ImportError, SpecdetError) as err:
        return f"no TensorRT runner here ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return _cuda()


# ---- the C++ runtime (the runner: cpp_variant.py) -------------------------------


def _cpp_toolchain() -> str | None:
    from specdet.runtime.cpp.build import find_compiler

    if shutil.which("cmake") is None or find_compiler() is None:
        return "building libspecdet_runtime needs cmake and a C++ compiler: apt-get install cmake g++"
    return None


# ---- the registry -------------------------------------------------------------

VARIANTS: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name} registered twice")
    VARIANTS[variant.name] = variant
    return variant


for _variant in (
    Variant(REFERENCE, "torch", "cpu", "PyTorch eager, FP32 (the reference)", torch_loader(), precision="fp32"),
    Variant("torch-autocast-bf16", "torch", "cpu", "PyTorch eager under torch.autocast(bfloat16)",
            torch_loader(autocast="bfloat16"), precision="autocast-bf16"),
    Variant("torch-compile", "torch", "cpu", "torch.compile (inductor, static shapes), FP32",
            torch_loader(compile=True), requires=_compiler, precision="fp32"),
    Variant("torch-cuda-fp32", "torch", "cuda", "PyTorch eager on the GPU, strict FP32 (TF32 off for products and "
            "convolutions)", torch_loader("cuda", tf32=False), requires=_cuda, precision="fp32"),
    Variant("torch-cuda-fp32-tf32", "torch", "cuda", "PyTorch eager on the GPU, FP32 with TF32 tensor-core products "
            "and convolutions", torch_loader("cuda", tf32=True), requires=_cuda, precision="fp32-tf32"),
    Variant("torch-cuda-autocast-fp16", "torch", "cuda", "PyTorch eager on the GPU under autocast(float16)",
            torch_loader("cuda", autocast="float16"), requires=_cuda, precision="autocast-fp16"),
    Variant("torch-cuda-autocast-bf16", "torch", "cuda", "PyTorch eager on the GPU under autocast(bfloat16)",
            torch_loader("cuda", autocast="bfloat16"), requires=_cuda, precision="autocast-bf16"),
    Variant("torch-cuda-compile", "torch", "cuda", "torch.compile (inductor) on the GPU, FP32",
            torch_loader("cuda", compile=True), requires=_cuda_compiler, precision="fp32"),
    Variant("torch-cuda-compile-fp16", "torch", "cuda", "torch.compile (inductor) on the GPU under autocast(float16)",
            torch_loader("cuda", autocast="float16", compile=True), requires=_cuda_compiler, precision="autocast-fp16"),
    Variant("torch-cuda-kernels", "torch", "cuda", "PyTorch eager on the GPU, FP32, spectral ops in our CUDA kernels",
            torch_loader("cuda", kernels=True), requires=_cuda, precision="fp32"),
    Variant("torch-cuda-autocast-fp16-kernels", "torch", "cuda",
            "PyTorch eager on the GPU under autocast(float16), spectral ops in our CUDA kernels",
            torch_loader("cuda", autocast="float16", kernels=True), requires=_cuda, precision="autocast-fp16"),
    Variant("torch-cuda-compile-fp16-kernels", "torch", "cuda",
            "torch.compile on the GPU under autocast(float16), spectral ops in our CUDA kernels",
            torch_loader("cuda", autocast="float16", compile=True, kernels=True), requires=_cuda_compiler,
            precision="autocast-fp16"),
    Variant("torch-cuda-graphs-fp16", "torch", "cuda",
            "PyTorch eager on the GPU under autocast(float16), captured per batch shape as a CUDA graph",
            torch_loader("cuda", autocast="float16", cuda_graphs=True), requires=_cuda, precision="autocast-fp16"),
    Variant("torch-cuda-graphs-fp16-kernels", "torch", "cuda",
            "as torch-cuda-graphs-fp16, spectral ops in our CUDA kernels",
            torch_loader("cuda", autocast="float16", kernels=True, cuda_graphs=True), requires=_cuda,
            precision="autocast-fp16"),
    # The fast path (fast_graph.py): FP16 backbone weights cast once, uint8 crops normalised inside the graph,
    # BatchNorm folded, channels-last frequency convs, CLIP's unused pooler dropped (issue 20).
    Variant("torch-cuda-fast-fp16", "torch", "cuda",
            "fast path: FP16 backbone weights, uint8 crops normalised inside the CUDA graph (fast_graph.py)",
            torch_loader("cuda", cuda_graphs=True, fast="float16"), requires=_cuda, precision="fp16"),
    Variant("torch-cuda-fast-fp16-kernels", "torch", "cuda", "as torch-cuda-fast-fp16, spectral ops in our CUDA kernels",
            torch_loader("cuda", cuda_graphs=True, kernels=True, fast="float16"), requires=_cuda, precision="fp16"),
    # max-autotune tries kernels per matrix shape for minutes: only when named.
    Variant("torch-cuda-fast-compile-fp16", "torch", "cuda",
            "as torch-cuda-fast-fp16, torch.compile (max-autotune-no-cudagraphs) inside our CUDA graphs",
            torch_loader("cuda", cuda_graphs=True, compile=True, compile_mode="max-autotune-no-cudagraphs",
                         fast="float16"), requires=_cuda_compiler, precision="fp16", by_name_only=True),
    # The same module on the CPU, no graphs: a check of its numerics and of the suite's dry run, slower than FP32.
    Variant("torch-fast-fp16", "torch", "cpu", "the fast path's module on the CPU in FP16 (a numerics check, not fast "
            "here)", torch_loader(fast="float16"), precision="fp16", by_name_only=True),
    Variant("onnxruntime-cpu", "onnxruntime", "cpu", "ONNX Runtime, CPU execution provider",
            _onnxruntime("CPUExecutionProvider")),
    Variant("onnxruntime-cuda", "onnxruntime", "cuda", "ONNX Runtime, CUDA execution provider (CPU for nodes it lacks)",
            _onnxruntime("CUDAExecutionProvider", "CPUExecutionProvider"), requires=_onnxruntime_cuda),
    Variant("cpp-onnxruntime", "onnxruntime", "cpu", "libspecdet_runtime (C++, ONNX Runtime C API) through its C ABI",
            CppRunner, requires=_cpp_toolchain, by_name_only=True),  # it builds a library: only when asked for
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


def artifact_kind(path: os.PathLike) -> str | None:
    """The backend whose runner takes ``path`` by its suffix, or None."""
    return BACKEND_BY_SUFFIX.get(Path(path).suffix.lower())
