"""The TensorRT library an engine is built with: which package, its logger, its compute-capability targets.

One code path for both Python packages, ``tensorrt`` (10.x/11.x) and
``tensorrt_rtx`` (TensorRT-RTX): their builder, parser, network and config
APIs match, and the few differences are feature checks, not version
branches (RTX needs compute-capability targets to build ahead of time on a
machine without a GPU).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from types import ModuleType

from specdet.errors import SpecdetError

# --backend name -> Python module; the first installed one is the default.
ENGINE_LIBRARIES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
LIBRARY_NAMES = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}
# Targets of an ahead-of-time TensorRT-RTX build on a machine without a GPU:
# every Ampere-or-newer capability the library knows (its Turing target
# cannot build FP32 GEMMs). The engine's size does not depend on the count.
AOT_MIN_CAPABILITY = (8, 0)


@dataclasses.dataclass
class Library:
    """The library every build stage talks to: its ``--backend`` name, module and logger."""

    backend: str
    trt: ModuleType
    logger: object  # a CapturingLogger

    @property
    def name(self) -> str:
        return library_name(self.trt)


def open_library(backend: str | None, verbose: bool) -> Library:
    """``backend`` (or the first installed library) with a capturing logger and its built-in plugins registered."""
    backend, trt = load_backend(backend)
    logger = CapturingLogger(trt, verbose)
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
    return Library(backend, trt, logger)


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


def capability_names(trt: ModuleType, targets: list) -> list[str]:
    """``targets`` as the manifest writes them: ``"8.6"``, and the GPU's own capability for ``CURRENT``."""
    return [
        (current_compute_capability() or "current") if t == trt.ComputeCapability.CURRENT else _cc_text(t.name)
        for t in targets
    ]


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
