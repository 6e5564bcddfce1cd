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
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path

import numpy as np

from specdet.errors import SpecdetError
from specdet import tensorrt as trt_plugins
from specdet.manifest import read_manifest
from specdet.runtime.base import OUTPUT_NAMES, ArtifactInfo, Runner, require_file

_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "int32": "int32", "int64": "int64", "bool": "bool"}


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


def _import_library(engine: dict):
    module = engine.get("library", "tensorrt")
    try:
        trt = importlib.import_module(module)
    except ImportError:
        extra = "rtx" if module == "tensorrt_rtx" else "tensorrt"
        raise SpecdetError(
            f"the engine was built with {module} {engine.get('library_version', '?')}: pip install 'specdet[{extra}]' "
            "(the same version)"
        ) from None
    return trt


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(
        self,
        artifact: str | os.PathLike,
        *,
        arch: str | None = None,
        threads: int | None = None,  # CPU threads: not used by this backend
        cuda_graphs: bool = False,
        plugins: list[str | os.PathLike] | None = None,
    ):
        path = require_file(artifact)
        manifest = read_manifest(path)
        engine_info = manifest.get("engine")
        if not isinstance(engine_info, dict):
            raise SpecdetError(f"{path.name} is not described as an engine by its manifest: build it with detect-build")
        if arch is not None and arch != manifest["architecture"]:
            raise SpecdetError(f"{path.name} holds a {manifest['architecture']} model, not {arch}: drop --arch")
        trt = _import_library(engine_info)
        built = engine_info.get("library_version")
        if built and built != trt.__version__:
            raise SpecdetError(
                f"{path.name} was built with {trt.__name__} {built}; this is {trt.__version__}: rebuild it with "
                "detect-build (engines are tied to the library version that built them)"
            )
        torch = _import_torch_cuda()
        self._check_device(path, engine_info, torch)
        self._torch, self._trt = torch, trt
        self._logger = trt.Logger(trt.Logger.ERROR)
        if hasattr(trt, "init_libnvinfer_plugins"):
            trt.init_libnvinfer_plugins(self._logger, "")
        wanted = plugins if plugins is not None else [p["path"] for p in engine_info.get("plugins", [])]
        trt_plugins.load_plugin_libraries(trt, wanted)
        self._engine = self._deserialize(path, trt)
        self._cuda_graphs = cuda_graphs
        (spec,) = manifest["inputs"]
        self._input = spec["name"]
        self._io = self._check_io(path, manifest)
        self._max_batch = int(manifest["batch"]["max"])
        self._local = threading.local()
        super().__init__(path, ArtifactInfo.from_manifest(manifest))

    # --- loading ---

    @staticmethod
    def _check_device(path: Path, engine_info: dict, torch) -> None:
        major, minor = torch.cuda.get_device_capability()
        here = f"{major}.{minor}"
        targets = engine_info.get("compute_capabilities")
        build_device = engine_info.get("build_device")
        if targets is None and build_device and build_device != here:
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

    def _check_io(self, path: Path, manifest: dict) -> dict[str, str]:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [self._input] or not set(OUTPUT_NAMES) <= set(outputs):
            raise SpecdetError(
                f"{path.name} has inputs {inputs} and outputs {outputs}; its manifest says {self._input!r} and "
                f"{list(OUTPUT_NAMES)}: rebuild it with detect-build"
            )
        dtypes = {}
        for name in names:
            dtype = str(engine.get_tensor_dtype(name)).split(".")[-1]
            dtypes[name] = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64",
                            "BOOL": "bool"}.get(dtype, dtype.lower())
        return dtypes

    # --- running ---

    def _state(self) -> "_ThreadState":
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadState(self)
        return state

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._state().run(batch)


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
            torch_dtype = getattr(torch, _TORCH_DTYPES.get(dtype, dtype))
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
