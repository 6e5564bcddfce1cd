"""The torch variants: a torch runner's module on a CUDA device, under autocast, compiled, through our kernels,
or captured as CUDA graphs (:class:`TorchVariantRunner`), and the loader the registry builds them with."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specdet.runtime import Runner, RunnerOptions, create_runner

if TYPE_CHECKING:  # imported by the torch loaders when they run: torch is not needed to list variants
    from specdet.runtime.torch_runner import TorchRunner


class TorchVariantRunner(Runner):
    """A torch runner's module run another way: on a CUDA device, under autocast, compiled, through our
    kernels (``use_kernels``), or captured once per batch shape as a CUDA graph and replayed."""

    name = "torch"

    def __init__(self, base: TorchRunner, *, device: str = "cpu", autocast: Any = None, compile: bool = False,
                 compile_mode: str | None = None, kernels: bool = False, cuda_graphs: bool = False,
                 tf32: bool | None = None):
        import torch

        super().__init__(base.artifact, base.info)
        self._torch = torch
        self._device = torch.device(device)
        self._base = base  # owns the module: closed with this runner
        module = self._prepare(base.module).to(self._device)
        self._call = torch.compile(module, dynamic=False, mode=compile_mode) if compile else module
        self._input_dtype = torch.float32  # what the module takes: normalised images (uint8 crops: fast_graph.py)
        self._autocast = autocast
        self._kernels = kernels
        if kernels:
            from specdet.kernels.torch_ops import use_kernels

            self._spectral_ops = use_kernels
        else:
            self._spectral_ops = contextlib.nullcontext
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}  # shape -> (graph, input, outputs)
        self._pinned: dict[Any, Any] = {}  # shape (and turn, for scores) -> pinned host buffer (crops in, scores out)
        self._cuda_graphs = cuda_graphs
        self._turn = 0  # which of the two score buffers the next batch takes
        self._copy_stream = torch.cuda.Stream() if self._device.type == "cuda" else None
        self._normalise = None  # normalise_constants on the device, made on first use
        self.gpu_seconds = 0.0  # the model's GPU time so far (CUDA only): what the end-to-end benchmark reports
        # FP32 matrix products and convolutions on TF32 tensor cores (True), in strict FP32 (False), or as the
        # process has it (None; the report records the settings)
        self._tf32 = tf32

    def _prepare(self, module):
        """The module this runner calls, made from the torch runner's ``ScoringModule``: here that module itself."""
        return module

    def _device_input(self, batch: np.ndarray):
        """What the module takes for the normalised host ``batch``, on the device: the batch itself."""
        return self._torch.from_numpy(batch).to(self._device)

    def _from_crops(self, crops):
        """What the module takes for uint8 crops already on the device: their normalisation (normalise_tensor)."""
        from specdet.runtime.torch_runner import normalise_tensor

        return normalise_tensor(crops, self.info.preprocessing, self._constants())

    def _forward(self, x):
        torch = self._torch
        # A graph replays the casts it captured; autocast's weight cache would hand it tensors freed after capture.
        cast = (torch.autocast(self._device.type, dtype=self._autocast, cache_enabled=not self._cuda_graphs)
                if self._autocast else contextlib.nullcontext())
        with torch.inference_mode(), cast, self._spectral_ops(), _tf32(torch, self._tf32):
            return self._call(x)

    def device_call(self, batch: np.ndarray):
        """A call that scores ``batch``, put on the device once here, with no host transfer and no host wait:
        the CUDA graph's replay when captured, else the forward. What the GPU's own time is measured on."""
        x = self._device_input(batch)
        if not self._cuda_graphs:
            return lambda: self._forward(x)
        graph, static, _ = self._graph(tuple(x.shape))
        static.copy_(x)
        return graph.replay

    def _graph(self, shape: tuple[int, ...]):
        """The CUDA graph of one forward at ``shape``: warmed up on a side stream (cuFFT plans, workspaces), then captured."""
        torch = self._torch
        if shape not in self._graphs:
            static = torch.zeros(shape, dtype=self._input_dtype, device=self._device)
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

    @property
    def uses_gpu(self) -> bool:
        return self._device.type == "cuda"

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(self._device_input(batch))

    def _infer_crops(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """On a GPU: the uint8 crops through a pinned buffer to the device (a quarter of the float bytes), normalised
        there (the same float32 values as on the CPU: normalise_tensor)."""
        if self._device.type != "cuda":
            return super()._infer_crops(crops)
        return self.infer_device_crops(self._to_device(crops, pinned=False))

    def infer_batch(self, batch) -> dict[str, np.ndarray]:
        """On a GPU: the batch's crops and regions to the device (straight from pinned slots when the pipeline
        pinned them), the regions resized there with Pillow's arithmetic (runtime/resample.py), normalised, scored."""
        if self._device.type != "cuda":
            return super().infer_batch(batch)
        return self.submit_batch(batch)()

    def submit_batch(self, batch):
        """On a GPU, double-buffered: the batch goes to the device (and its regions are resized) on a copy stream
        while the model may still be scoring the previous batch on the compute stream, which waits for the copy
        only; returns once the copy is done, so the caller can hand the slot back and read the next batch."""
        if self._device.type != "cuda":
            return super().submit_batch(batch)
        self.ensure_open()
        torch = self._torch
        compute = torch.cuda.current_stream()
        with torch.cuda.stream(self._copy_stream):
            crops = self.device_crops(batch)
            copied = torch.cuda.Event(blocking=True)
            copied.record()
        compute.wait_event(copied)
        crops.record_stream(compute)  # made on the copy stream, read on this one: not reused before that is done
        wait = self._launch(self._from_crops(crops))
        copied.synchronize()  # a blocking event: sleeps, leaving the core to the input workers
        return wait

    def device_crops(self, batch):
        """The batch's uint8 ``[N, crop, crop, 3]`` crops on the device, its regions resized there."""
        from specdet.runtime.resample import resize_regions

        crops = self._to_device(batch.crops, batch.pinned)
        if batch.regions:
            end = max(offset + int(np.prod(plan.shape)) for _, offset, plan in batch.regions)
            resize_regions(self._to_device(batch.arena[:end], batch.pinned), batch.regions, crops)
        return crops

    def _to_device(self, array: np.ndarray, pinned: bool):
        """``array`` on the device: asynchronously from pinned memory (the slot, or a staging buffer per shape of
        crops); a pageable copy for the arena of an unpinned pipeline."""
        torch = self._torch
        host = torch.from_numpy(array)
        if not pinned and array.ndim == 4:
            staging = self._pinned.get(array.shape)
            if staging is None:
                staging = self._pinned[array.shape] = torch.empty(array.shape, dtype=torch.uint8, pin_memory=True)
            host = staging.copy_(host)
            pinned = True
        return host.to(self._device, non_blocking=pinned)

    def infer_device_crops(self, crops) -> dict[str, np.ndarray]:
        """Score uint8 ``[N, crop, crop, 3]`` crops already on this runner's device (GPU decoding)."""
        self.ensure_open()
        return self._run(self._from_crops(crops))

    def _constants(self):
        """The normalisation constants on the device, made once."""
        if self._normalise is None:
            from specdet.runtime.torch_runner import normalise_constants

            self._normalise = normalise_constants(self.info.preprocessing, self._device)
        return self._normalise

    def _run(self, x) -> dict[str, np.ndarray]:
        return self._launch(x)()

    def _launch(self, x):
        """Start the model on ``x`` (replaying its CUDA graph, or eagerly) and the copy of its scores to the host;
        returns a function that waits for them. On the GPU the model's own time (events around it on the compute
        stream, no copies) is added to :attr:`gpu_seconds` when waited for."""
        torch = self._torch
        if self._device.type != "cuda":
            logit, probability = self._forward(x)
            scores = {"logit": logit.float().numpy(), "probability": probability.float().numpy()}
            return lambda: scores
        began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        began.record()
        if self._cuda_graphs:
            graph, static, (logit, probability) = self._graph(tuple(x.shape))
            static.copy_(x)
            graph.replay()
        else:
            logit, probability = self._forward(x)
        ended.record()
        scores = torch.stack([logit.float(), probability.float()])
        # Two host buffers per shape, taken in turn: one batch's scores may be waited for while the next is copied.
        self._turn ^= 1
        key = (tuple(scores.shape), self._turn)
        host = self._pinned.get(key)
        if host is None:
            host = self._pinned[key] = torch.empty(scores.shape, pin_memory=True)
        host.copy_(scores, non_blocking=True)
        done = torch.cuda.Event(blocking=True)
        done.record()

        def wait() -> dict[str, np.ndarray]:
            # A blocking event rather than .cpu(): CUDA's default wait spins a CPU core, one an input worker needs.
            done.synchronize()
            self.gpu_seconds += began.elapsed_time(ended) / 1e3
            return {"logit": host[0].numpy().copy(), "probability": host[1].numpy().copy()}

        return wait

    def _close(self) -> None:
        self._graphs.clear()
        self._pinned.clear()
        self._normalise = None
        del self._call
        self._base.close()


@contextlib.contextmanager
def _tf32(torch, enabled: bool | None):
    """TF32 for FP32 matrix products and cuDNN convolutions while the call runs (strict FP32 when False;
    torch's defaults are strict products but TF32 convolutions); None leaves the settings alone."""
    if enabled is None:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def torch_loader(device: str = "cpu", autocast: str | None = None, compile: bool = False, kernels: bool = False,
                 cuda_graphs: bool = False, tf32: bool | None = None, fast: str | None = None,
                 compile_mode: str | None = None):
    """A variant's ``load(artifact, threads)``: the torch runner as it is, or wrapped as these options say.
    ``fast``: the fast path (:mod:`~specdet.benchmarks.fast_graph`) with its backbones in this dtype."""
    def load(artifact: Path, threads: int | None) -> Runner:
        base = create_runner(artifact, "torch", RunnerOptions(threads=threads))
        if (device == "cpu" and autocast is None and not (compile or kernels or cuda_graphs) and tf32 is None
                and fast is None):
            return base
        import torch

        dtype = getattr(torch, autocast) if autocast else None
        options = dict(device=device, autocast=dtype, compile=compile, compile_mode=compile_mode, kernels=kernels,
                       cuda_graphs=cuda_graphs, tf32=tf32)
        if fast is None:
            return TorchVariantRunner(base, **options)
        from specdet.benchmarks.fast_graph import FastGraphRunner

        return FastGraphRunner(base, dtype=getattr(torch, fast), **options)

    return load
