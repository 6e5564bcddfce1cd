"""The ``tensorrt`` backend: runs an engine built by ``detect-build`` (TensorRT or TensorRT-RTX).

Device memory, pinned host buffers, streams and CUDA graphs come from
PyTorch (``torch.cuda``): torch is already a dependency of every specdet
install and of the GPU machines (which have neither pycuda nor TensorRT's
own samples' helpers), it is maintained, and its caching allocator, pinned
memory, streams and graph capture are all this backend needs. It stays
behind this module: callers pass and get numpy arrays.

Life cycle: the engine is deserialised once (after the library's
engine-validity check, where it has one, so that an engine from another
library version or for another GPU fails with a reason, not a crash). Each
calling thread gets its own execution context, CUDA stream and buffers
(device and pinned host, sized for the profile's largest batch), so
concurrent callers never share a context. One inference: copy the batch
into pinned memory, copy it to the device asynchronously, set the input
shape, ``execute_async_v3`` on the stream, copy the outputs back
asynchronously, synchronise the stream. With ``cuda_graphs=True`` the
``execute_async_v3`` call is captured once per batch size and replayed.
:meth:`TensorRTRunner.close` frees every thread's context, buffers and
graphs, then the engine.

Plugin libraries the engine was built with are found by the name and hash
its manifest records (:func:`specdet.tensorrt.resolve_plugin_libraries`):
``plugins=[...]`` (``--plugins``), ``$SPECDET_TRT_PLUGINS``, then the kernel
builds of this install. They are resolved before the GPU is touched, so a
missing or different library is reported first.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path

import numpy as np

from specdet import tensorrt as trt_plugins
from specdet.errors import SpecdetError
from specdet.kernels import build as kernel_build
from specdet.manifest import ENGINE_MODULES, OUTPUT_NAMES, EngineInfo, check_engine_file
from specdet.runtime.base import ArtifactInfo, Runner, RunnerOptions, read_manifest


def _import_torch_cuda():
    try:
        import torch
    except ImportError as err:  # torch is a dependency of specdet; this is a broken install
        raise SpecdetError("the tensorrt backend needs PyTorch with CUDA for device memory") from err
    if not torch.cuda.is_available():
        raise SpecdetError(
            "the tensorrt backend needs an NVIDIA GPU and a CUDA build of PyTorch; none is usable here: "
            "run the .onnx file with --backend onnxruntime instead"
        )
    return torch


def _import_library(engine: EngineInfo):
    # Checked again here, not only when the manifest is read: an EngineInfo
    # can be made in code, and nothing outside the allow-list is ever imported.
    if engine.library not in ENGINE_MODULES:
        raise SpecdetError(f"engine library {engine.library!r} is not one of {', '.join(ENGINE_MODULES)}: "
                           "rebuild the engine with detect-build")
    try:
        trt = importlib.import_module(engine.library)
    except ImportError:
        extra = "rtx" if engine.library == "tensorrt_rtx" else "tensorrt"
        raise SpecdetError(
            f"the engine was built with {engine.library} {engine.library_version or '?'}: "
            f"pip install 'specdet[{extra}]' (the same version)"
        ) from None
    return trt


def _kernel_builds() -> list[Path]:
    """The folders of this install's kernel builds (python -m specdet.kernels.build), newest first."""
    cache = kernel_build.cache_dir()
    if not cache.is_dir():
        return []
    return sorted((d for d in cache.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)


class TensorRTRunner(Runner):
    name = "tensorrt"
    OPTIONS = ("plugins", "cuda_graphs")

    def __init__(self, artifact: str | os.PathLike, options: RunnerOptions):  # options.threads (CPU): not used here
        path = Path(artifact)
        manifest = read_manifest(path, options)
        engine_info = manifest.engine
        if engine_info is None:
            raise SpecdetError(f"{path.name} is not described as an engine by its manifest: build it with detect-build")
        check_engine_file(path, engine_info)  # before the library or the GPU: a wrong pairing is reported first
        trt = _import_library(engine_info)
        built = engine_info.library_version
        if built and built != trt.__version__:
            raise SpecdetError(
                f"{path.name} was built with {trt.__name__} {built}; this is {trt.__version__}: rebuild it with "
                "detect-build (engines are tied to the library version that built them)"
            )
        libraries = trt_plugins.resolve_plugin_libraries(
            engine_info.plugins, explicit=options.plugins, installed=_kernel_builds(), engine=path.name
        )
        torch = _import_torch_cuda()
        self._check_device(path, engine_info, torch)
        self._torch, self._trt = torch, trt
        self._logger = trt.Logger(trt.Logger.ERROR)
        if hasattr(trt, "init_libnvinfer_plugins"):
            trt.init_libnvinfer_plugins(self._logger, "")
        trt_plugins.load_plugin_libraries(trt, libraries)
        self._engine = self._deserialize(path, trt)
        self._cuda_graphs = bool(options.cuda_graphs)
        self._input = manifest.input.name
        self._io = self._check_io(path)
        self._max_batch = manifest.batch.max
        self._local = threading.local()
        self._states: list[_ThreadState] = []  # every thread's, so that close() can free them all
        self._states_lock = threading.Lock()
        super().__init__(path, ArtifactInfo.from_manifest(manifest))

    @property
    def uses_gpu(self) -> bool:
        return True

    @property
    def engine(self):
        """The deserialised ``ICudaEngine`` (valid until :meth:`close`)."""
        self.ensure_open()
        return self._engine

    # --- loading ---

    @staticmethod
    def _check_device(path: Path, engine_info: EngineInfo, torch) -> None:
        major, minor = torch.cuda.get_device_capability()
        here = f"{major}.{minor}"
        build_device = engine_info.build_device
        if engine_info.compute_capabilities is None and build_device and build_device != here:
            # Full TensorRT engines run on the compute capability they were built on.
            raise SpecdetError(
                f"{path.name} was built on a GPU of compute capability {build_device}; this GPU is {here}: "
                "rebuild it here with detect-build"
            )

    def _deserialize(self, path: Path, trt):
        data = path.read_bytes()
        runtime = trt.Runtime(self._logger)
        if hasattr(runtime, "get_engine_validity"):
            validity, diagnostics = runtime.get_engine_validity(data)
            if validity == trt.EngineValidity.INVALID:
                reasons = [
                    name.lower().replace("_", " ")
                    for name, flag in trt.EngineInvalidityDiagnostics.__members__.items()
                    if int(diagnostics) & int(flag)  # the flags are bit masks
                ]
                raise SpecdetError(
                    f"{path.name} cannot run here ({', '.join(reasons) or 'no reason given'}): rebuild it with "
                    f"detect-build for this GPU and {trt.__name__} {trt.__version__}"
                )
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise SpecdetError(f"{trt.__name__} could not load {path.name}: rebuild it with detect-build on this machine")
        self._runtime = runtime  # the engine must not outlive its runtime
        return engine

    def _check_io(self, path: Path) -> dict[str, str]:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [self._input] or not set(OUTPUT_NAMES) <= set(outputs):
            raise SpecdetError(
                f"{path.name} has inputs {inputs} and outputs {outputs}; its manifest says {self._input!r} and "
                f"{list(OUTPUT_NAMES)}: rebuild it with detect-build"
            )
        return {name: trt_plugins.numpy_dtype(engine.get_tensor_dtype(name)) for name in names}

    # --- running ---

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadState(self)
            with self._states_lock:
                self._states.append(state)
        return state

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._state().run(batch)

    def _close(self) -> None:
        with self._states_lock:
            for state in self._states:
                state.release()
            self._states.clear()
        self._local = threading.local()
        # Contexts before the engine, the engine before its runtime (TensorRT's ownership order).
        del self._engine
        del self._runtime


class _ThreadState:
    """One thread's execution context, stream, buffers and captured graphs."""

    def __init__(self, runner: TensorRTRunner):
        torch = runner._torch
        self.runner, self.torch = runner, torch
        self.context = runner._engine.create_execution_context()
        if self.context is None:
            raise SpecdetError("could not create a TensorRT execution context: not enough GPU memory?")
        self.stream = torch.cuda.Stream()
        engine, n = runner._engine, runner._max_batch
        self.device, self.host = {}, {}
        for name, dtype in runner._io.items():
            shape = list(engine.get_tensor_shape(name))
            shape = [n if i == 0 and d < 0 else int(d) for i, d in enumerate(shape)]
            torch_dtype = getattr(torch, dtype)  # numpy and torch share these dtype names
            self.device[name] = torch.empty(shape, dtype=torch_dtype, device="cuda")
            self.host[name] = torch.empty(shape, dtype=torch_dtype, pin_memory=True)
            self.context.set_tensor_address(name, self.device[name].data_ptr())
        self.outputs = [name for name in runner._io if name != runner._input]
        self.graphs: dict[int, object] = {}

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise SpecdetError("TensorRT inference failed (execute_async_v3 returned false)")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch, name, count = self.torch, self.runner._input, batch.shape[0]
        self.host[name][:count].copy_(torch.from_numpy(batch))
        with torch.cuda.stream(self.stream):
            self.device[name][:count].copy_(self.host[name][:count], non_blocking=True)
            if not self.context.set_input_shape(name, tuple(batch.shape)):
                raise SpecdetError(f"batch shape {tuple(batch.shape)} is outside the engine's profile")
            if self.runner._cuda_graphs:
                self._replay(count)
            else:
                self._execute()
            for out in self.outputs:
                self.host[out][:count].copy_(self.device[out][:count], non_blocking=True)
        self.stream.synchronize()
        return {out: self.host[out][:count].numpy().copy() for out in self.outputs}

    def release(self) -> None:
        """Wait for this thread's work, then drop its graphs, context and buffers (device and pinned)."""
        self.stream.synchronize()
        self.graphs.clear()
        del self.context
        self.device.clear()
        self.host.clear()

    def _replay(self, count: int) -> None:
        graph = self.graphs.get(count)
        if graph is None:
            self._execute()  # TensorRT allocates lazily on the first run: never inside a capture
            self.stream.synchronize()
            graph = self.torch.cuda.CUDAGraph()
            with self.torch.cuda.graph(graph, stream=self.stream):
                self._execute()
            self.graphs[count] = graph
        graph.replay()
