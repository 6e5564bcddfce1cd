"""The runner interface every backend implements, and the registry of backends.

A runner loads one artifact and turns a preprocessed batch into scores. Its
public :meth:`Runner.infer` checks the batch against the artifact's input
spec and raises a one-line :class:`SpecdetError` before the backend's own
:meth:`Runner._infer` ever sees a bad input (Polygraphy's runner pattern).
Runners do not time themselves: the benchmarks do, around ``infer``.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from specdet.errors import SpecdetError
from specdet.limits import MAX_THREADS, check_count
from specdet.manifest import ENGINE_SUFFIXES, ONNX_SUFFIX, OUTPUT_NAMES, Manifest, TensorSpec, is_engine
from specdet.onnx_external import external_data_files
from specdet.runtime.pipeline import Batch, finish_crops
from specdet.runtime.preprocess import normalise

# Backend name -> "module:Class". Imported on first use, so a backend's
# library (onnxruntime, openvino, tensorrt) is needed only when that backend is chosen.
BACKENDS = {
    "torch": "specdet.runtime.torch_runner:TorchRunner",
    "onnxruntime": "specdet.runtime.onnxruntime_runner:OnnxRuntimeRunner",
    "openvino": "specdet.runtime.openvino_runner:OpenVinoRunner",
    "tensorrt": "specdet.runtime.tensorrt_runner:TensorRTRunner",
}

# Artifact suffix -> backend used when none is named.
BACKEND_BY_SUFFIX = {
    ".pth": "torch", ".pt": "torch", ONNX_SUFFIX: "onnxruntime", **dict.fromkeys(ENGINE_SUFFIXES, "tensorrt")
}

# Backend -> the artifact suffixes it runs: those it is the default for, and
# .onnx for openvino too (named only: onnxruntime stays the default for .onnx).
BACKEND_SUFFIXES = {
    backend: tuple(s for s, default in BACKEND_BY_SUFFIX.items() if default == backend) for backend in BACKENDS
} | {"openvino": (ONNX_SUFFIX,)}


# The RunnerOptions fields every backend takes; the others are backend options, each taken by some (Runner.OPTIONS).
_EVERY_BACKEND = ("arch", "threads")


@dataclasses.dataclass(frozen=True)
class RunnerOptions:
    """How to run an artifact, on whichever backend; None: not given, the backend's default.

    Checked when made (``threads``) and when a runner is created (a backend
    option the chosen backend lacks is an error), so every entry point
    (:func:`create_runner`, ``Detector``, ``detect-predict``, the Ray actors)
    refuses the same things with the same one-line message.
    """

    arch: str | None = None  # architecture of a bare state dict (a checkpoint or a manifest names its own)
    threads: int | None = None  # CPU threads for inference, 1 to MAX_THREADS
    providers: Sequence[str] | None = None  # onnxruntime: execution provider names, in order of preference
    plugins: Sequence[str | os.PathLike] | None = None  # tensorrt: plugin library files or folders searched first
    cuda_graphs: bool | None = None  # tensorrt: replay each batch size as a CUDA graph
    inference_precision: str | None = None  # openvino: the precision it computes in (openvino_runner.INFERENCE_PRECISIONS)

    def __post_init__(self) -> None:
        if self.threads is not None:
            check_count(self.threads, "threads", MAX_THREADS)

    def backend_options(self) -> list[str]:
        """The names of the backend options given (not None), in field order."""
        return [field.name for field in dataclasses.fields(self)
                if field.name not in _EVERY_BACKEND and getattr(self, field.name) is not None]


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """What a runner learned from its artifact (checkpoint or manifest)."""

    architecture: str
    preprocessing: dict[str, Any]
    threshold: float
    input: TensorSpec
    max_batch: int | None  # None: no limit
    manifest: Manifest | None = None  # exported artifacts (None: a checkpoint)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ArtifactInfo:
        return cls(
            architecture=manifest.architecture,
            preprocessing=manifest.preprocessing,
            threshold=manifest.threshold,
            input=manifest.input,
            max_batch=manifest.batch.max,
            manifest=manifest,
        )


class Runner(abc.ABC):
    """One loaded artifact. Subclasses take ``(artifact, options: RunnerOptions)``, load the artifact, and pass
    what they learned to ``Runner.__init__``; :func:`create_runner` checks the options (:meth:`check_options`)
    before it builds one.

    Life cycle (as Polygraphy's runners and ONNX Runtime sessions): a runner
    holds its backend's resources (session, module, engine, GPU memory) from
    construction to :meth:`close`, which releases them; ``with`` closes it on
    exit. Closing twice is safe; a closed runner refuses to run. Close it
    only when no other thread is inside :meth:`infer`.
    """

    name: ClassVar[str]  # the backend's key in BACKENDS
    OPTIONS: ClassVar[tuple[str, ...]] = ()  # the backend options (RunnerOptions fields) it takes

    @classmethod
    def check_options(cls, options: RunnerOptions) -> None:
        """Refuse, in one line, a backend option this backend lacks (a backend may check values too)."""
        refused = [name for name in options.backend_options() if name not in cls.OPTIONS]
        if refused:
            takes = f"it takes {', '.join(cls.OPTIONS)}" if cls.OPTIONS else "it takes none"
            raise SpecdetError(
                f"the {cls.name} backend has no option {', '.join(refused)} ({takes}): drop it or choose another backend"
            )

    def __init__(self, artifact: str | os.PathLike, info: ArtifactInfo):
        self.artifact = Path(artifact)
        self.info = info
        self._closed = False

    @property
    def uses_gpu(self) -> bool:
        """Whether the model runs on a GPU, leaving the CPUs to the input workers (their default count)."""
        return False

    def input_spec(self) -> TensorSpec:
        return self.info.input

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Score a preprocessed batch: ``{"logit": [N], "probability": [N]}``, float32."""
        self.ensure_open()
        self._check_input(batch)
        return _outputs(self._infer(batch), batch.shape[0])

    def infer_crops(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Score uint8 ``[N, crop, crop, 3]`` crops (the input pipeline's batches), normalised first, as :meth:`infer`."""
        self.ensure_open()
        crop = self.info.preprocessing["crop"]
        if not (isinstance(crops, np.ndarray) and crops.dtype == np.uint8 and crops.shape[1:] == (crop, crop, 3)):
            shown = f"{crops.dtype} {tuple(crops.shape)}" if isinstance(crops, np.ndarray) else type(crops).__name__
            raise SpecdetError(f"crops are {shown}; {self.artifact.name} takes uint8 (N, {crop}, {crop}, 3): "
                               "read them with specdet.runtime.preprocess.image_crop")
        return _outputs(self._infer_crops(crops), crops.shape[0])

    def infer_device_crops(self, crops: Any) -> dict[str, np.ndarray]:
        """Score uint8 ``[N, crop, crop, 3]`` crops held in a torch tensor on any device (decoded there:
        :mod:`specdet.runtime.device_decode`). Here they are copied to the host and scored as :meth:`infer_crops`;
        a runner on their device scores them where they are."""
        return self.infer_crops(crops.cpu().numpy())

    def infer_batch(self, batch: Batch) -> dict[str, np.ndarray]:
        """Score a batch the input pipeline read: its crops, with the regions it left for the device resized first
        (here on the CPU; a runner on a GPU resizes them there, to the same bytes)."""
        return self.infer_crops(finish_crops(batch))

    def submit_batch(self, batch: Batch) -> Callable[[], dict[str, np.ndarray]]:
        """Start scoring a batch the input pipeline read; returns a function that waits for its scores (as
        :meth:`infer_batch` gives them). Once this returns, the batch's memory (its slot) is no longer read, so the
        caller may ask for the next batch. Here the batch is scored before returning; a runner on a GPU returns
        once the batch is on its device, and scores it while the caller reads the next (:func:`score_batches`)."""
        scores = self.infer_batch(batch)
        return lambda: scores

    def _infer_crops(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Normalise on the CPU (:func:`~specdet.runtime.preprocess.normalise`) and run :meth:`infer`'s checks and
        backend. A runner on a GPU overrides this to copy the four-times smaller uint8 batch and normalise on
        its device, to the same float32 values."""
        batch = normalise(crops, self.info.preprocessing).astype(self.input_spec().dtype, copy=False)
        self._check_input(batch)
        return self._infer(batch)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the backend's resources; a second call does nothing."""
        if not self._closed:
            self._closed = True
            self._close()

    def ensure_open(self) -> None:
        if self._closed:
            raise SpecdetError(f"the {self.name} runner of {self.artifact.name} is closed: create a new one")

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the backend on a batch already checked against :meth:`input_spec`."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Drop the backend's objects (called once, by :meth:`close`)."""

    def _check_input(self, batch: Any) -> None:
        spec = self.info.input
        expected = "(" + ", ".join(str(d) for d in spec.shape) + ")"
        what = f"{self.artifact.name} expects {spec.dtype} {expected}"
        if not isinstance(batch, np.ndarray):
            raise SpecdetError(f"input is a {type(batch).__name__}, not a numpy array: {what}")
        fits = batch.ndim == len(spec.shape) and all(
            isinstance(want, str) or got == want for got, want in zip(batch.shape, spec.shape)
        )
        if not fits:
            raise SpecdetError(
                f"input has shape {tuple(batch.shape)}; {what}: preprocess images with specdet.runtime.preprocess"
            )
        if batch.dtype != np.dtype(spec.dtype):
            raise SpecdetError(f"input has dtype {batch.dtype}; {what}: convert it with .astype({spec.dtype!r})")
        limit = self.info.max_batch
        if batch.shape[0] < 1:
            raise SpecdetError(f"a batch of 0 images; {self.artifact.name} takes 1 image or more: pass at least one")
        if limit is not None and batch.shape[0] > limit:
            raise SpecdetError(f"batch of {batch.shape[0]} images; {self.artifact.name} takes 1 to {limit}: use a "
                               f"smaller --batch-size or {batch_range_remedy(self.artifact)}")


def score_batches(runner: Runner, batches: Iterable[Batch]) -> Iterator[tuple[Batch, dict[str, np.ndarray] | None]]:
    """Each batch with its scores (None when no file in it was readable), in order, one batch in flight: the
    runner scores a batch (:meth:`Runner.submit_batch`) while the next one is asked for. A batch comes out after
    the next has been asked for: its crops are gone by then, its paths, errors and frames are not."""
    pending: tuple[Batch, Callable[[], dict[str, np.ndarray]] | None] | None = None
    for batch in batches:
        submitted = (batch, runner.submit_batch(batch) if batch.readable else None)
        if pending is not None:
            yield pending[0], pending[1]() if pending[1] else None
        pending = submitted
    if pending is not None:
        yield pending[0], pending[1]() if pending[1] else None


def _outputs(outputs: dict[str, Any], count: int) -> dict[str, np.ndarray]:
    return {name: np.asarray(outputs[name], dtype=np.float32).reshape(count) for name in OUTPUT_NAMES}


def batch_range_remedy(artifact: str | os.PathLike) -> str:
    """How to make ``artifact`` take larger batches: an engine's range is its build's, an ONNX file's its export's."""
    if is_engine(artifact):
        return "rebuild the engine with a larger detect-build --batch"
    return "re-export with a larger detect-export --max-batch"


def remake_remedy(artifact: str | os.PathLike) -> str:
    """How to make ``artifact`` again: engines are rebuilt from their ONNX file, the rest re-exported or re-saved."""
    if is_engine(artifact):
        return "rebuild it with detect-build"
    if Path(artifact).suffix.lower() == ONNX_SUFFIX:
        return "re-export it with detect-export"
    return "save it again with specdet.models.checkpoint.save"


def runner_class(backend: str) -> type[Runner]:
    if backend not in BACKENDS:
        raise SpecdetError(f"unknown backend {backend!r}: known: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), cls)


def default_backend(artifact: str | os.PathLike) -> str:
    suffix = Path(artifact).suffix.lower()
    if suffix not in BACKEND_BY_SUFFIX:
        raise SpecdetError(
            f"cannot tell the backend of {Path(artifact).name} from its suffix: "
            f"pass --backend ({', '.join(BACKENDS)})"
        )
    return BACKEND_BY_SUFFIX[suffix]


def create_runner(
    artifact: str | os.PathLike, backend: str | None = None, options: RunnerOptions | None = None, **keywords: Any
) -> Runner:
    """Load ``artifact`` with ``backend`` (default: chosen by the file suffix).

    ``options`` (:class:`RunnerOptions`) say how to run it; ``keywords`` are
    :class:`RunnerOptions` fields set over them, for convenience:
    ``create_runner("model.onnx", providers=["CPUExecutionProvider"])``. A
    backend option the backend does not take is an error.
    """
    options = dataclasses.replace(options or RunnerOptions(), **keywords)
    cls = runner_class(backend or default_backend(artifact))
    cls.check_options(options)
    return cls(artifact, options)


def require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SpecdetError(f"artifact {path} not found: check the path")
    return path


def read_manifest(artifact: str | os.PathLike, options: RunnerOptions) -> Manifest:
    """The manifest of an exported artifact (``.onnx``, engine); an ``options.arch`` it does not hold is an error."""
    path = require_file(artifact)
    manifest = Manifest.read(path)
    if not is_engine(path):  # an ONNX file: what its weights point at is checked before a backend follows it
        external_data_files(path)
    if options.arch is not None and options.arch != manifest.architecture:
        raise SpecdetError(f"{path.name} holds a {manifest.architecture} model, not {options.arch}: drop --arch")
    return manifest
