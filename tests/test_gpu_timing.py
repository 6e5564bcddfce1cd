"""Honest GPU timing (issue 20), checked on the CPU with stubs: nothing but the GPU's work in the timed region.

- The device clock: one event pair around a block of back-to-back calls, one host wait after it, none inside.
- detect-bench's GPU rows time ``device_call`` (a batch already on the device, the graph's replay): no host copy, no
  wait; the transfers are timed apart, asynchronously, between pinned buffers and the device.
- The kernel micro-benchmark: blocks of calls on inputs rotated through copies larger than L2.
- TF32 on and off for the two FP32 baselines; the GPU's peaks for the fractions next to each figure.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from specdet.benchmarks import bench, machine, peaks, timing, transfers
from specdet.benchmarks.torch_variants import TorchVariantRunner, _tf32


class StubCuda:
    """``torch.cuda`` as the clock uses it: events on a fake GPU timeline that each call advances, and a log."""

    def __init__(self, log: list, ms_per_call: float):
        self.log, self.ms_per_call, self.now = log, ms_per_call, 0.0

    def synchronize(self):
        self.log.append("device sync")

    def Event(self, enable_timing=False):  # noqa: N802 (torch's name)
        assert enable_timing
        return StubEvent(self)

    def call(self):
        self.log.append("call")
        self.now += self.ms_per_call


class StubEvent:
    def __init__(self, cuda: StubCuda):
        self.cuda, self.at = cuda, None

    def record(self):
        self.cuda.log.append("record")
        self.at = self.cuda.now

    def synchronize(self):
        self.cuda.log.append("event wait")

    def elapsed_time(self, end: StubEvent) -> float:
        return end.at - self.at


def test_device_clock_times_a_block_between_one_event_pair_and_waits_only_after_it():
    log: list = []
    cuda = StubCuda(log, ms_per_call=2.0)
    seconds = timing.CudaEventClock(cuda).measure(cuda.call, 50)
    assert seconds == pytest.approx(2e-3)  # per call: the block's 100 ms over 50 calls
    # A wait before the block (earlier work stays out), then nothing but the calls between the two events.
    assert log == ["device sync", "record"] + ["call"] * 50 + ["record", "event wait"]


def test_device_blocks_in_the_timing_loop_warm_up_with_single_calls():
    log: list = []
    cuda = StubCuda(log, ms_per_call=4.0)
    subject = timing.Subject("gpu", cuda.call, timing.CudaEventClock(cuda), calls=50)
    (samples,) = timing.run([subject], timing.Plan(warmup=2, iters=3, device_calls=50))
    assert samples.seconds == pytest.approx([4e-3] * 3) and samples.calls_per_sample == 50
    assert log.count("call") == 2 + 3 * 50 and log.count("event wait") == 5
    blocks = "".join("c" if e == "call" else "|" for e in log).split("|")
    assert [len(b) for b in blocks if b] == [1, 1, 50, 50, 50]  # no wait, no record inside a block


def test_block_spread_and_plan_checks():
    assert timing.block_spread([1.0, 1.1, 0.9]) == pytest.approx(0.2)
    assert timing.block_spread([1.0]) is None
    with pytest.raises(ValueError, match="calls per device sample"):
        timing.Plan(device_calls=0)
    assert "50 back-to-back" in timing.Plan(warmup=1, iters=3, device_calls=50).describe()


# ---- detect-bench: the GPU rows time device_call, transfers apart --------------------------------


class Forbidden(AssertionError):
    pass


def _forbid(monkeypatch, target, name):
    def refuse(*args, **kwargs):
        raise Forbidden(f"{name} in the timed region")

    monkeypatch.setattr(target, name.rsplit(".", 1)[-1], refuse)


def _no_host_traffic(monkeypatch, runner):
    """Every way a call could move data between host and device, or wait for the device, raises."""
    for target, name in ((torch, "from_numpy"), (torch.Tensor, "Tensor.numpy"), (torch.Tensor, "Tensor.cpu"),
                         (torch.Tensor, "Tensor.item"), (torch.Tensor, "Tensor.tolist"), (torch.Tensor, "Tensor.pin_memory"),
                         (torch.cuda, "cuda.synchronize"), (torch.cuda, "cuda.Event"),
                         (runner, "runner._to_device"), (runner, "runner._run"), (runner, "runner.infer")):
        _forbid(monkeypatch, target, name)


@pytest.fixture
def variant_runner(tiny_checkpoint):
    from specdet.runtime import RunnerOptions, create_runner

    base = create_runner(tiny_checkpoint, "torch", RunnerOptions(threads=1))
    runner = TorchVariantRunner(base, device="cpu", autocast=torch.bfloat16)
    yield runner
    runner.close()


def _batch(runner, n=2) -> np.ndarray:
    shape = list(runner.input_spec().shape)
    shape[0] = n
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_device_call_runs_the_forward_without_transfer_or_wait(variant_runner, monkeypatch):
    batch = _batch(variant_runner)
    call = variant_runner.device_call(batch)  # the one copy to the device happens here, before timing
    expected = variant_runner.infer(batch)["logit"]
    _no_host_traffic(monkeypatch, variant_runner)
    logit, _ = call()
    monkeypatch.undo()
    np.testing.assert_allclose(logit.float().numpy(), expected, rtol=0, atol=0)


def test_device_call_of_a_captured_graph_is_its_replay(variant_runner, monkeypatch):
    class Graph:
        replays = 0

        def replay(self):
            Graph.replays += 1

    batch = _batch(variant_runner)
    static = torch.zeros(batch.shape)
    variant_runner._cuda_graphs = True
    monkeypatch.setattr(variant_runner, "_graph", lambda shape: (Graph(), static, None))
    call = variant_runner.device_call(batch)
    assert torch.equal(static, torch.from_numpy(batch))  # the input copied into the graph's buffer once, here
    _no_host_traffic(monkeypatch, variant_runner)
    call()
    call()
    assert Graph.replays == 2


def _loaded(device: str, runner) -> types.SimpleNamespace:
    variant = types.SimpleNamespace(device=device, backend="torch")
    return types.SimpleNamespace(id=f"v-{device}", variant=variant, runner=runner, input_dtype=np.dtype(np.float32),
                                 clock=timing.MonotonicClock, memory_probe=timing.NoProbe)


def test_bench_times_gpu_variants_on_the_device_in_blocks():
    made = []

    class Runner:
        def device_call(self, batch):
            made.append(batch.shape)
            return lambda: "device work"

        def infer(self, batch):
            raise Forbidden("runner.infer (host array in, host arrays out) timed for a GPU variant")

    plan = timing.Plan(warmup=1, iters=3, device_calls=50)
    item = _loaded("cuda", Runner())
    subject = bench._subject(item, np.zeros((4, 3, 8, 8), np.float32), plan)
    assert subject.call() == "device work" and subject.calls == 50 and made == [(4, 3, 8, 8)]
    assert bench.timed_region(item) == "device"
    cpu = _loaded("cpu", types.SimpleNamespace(infer=lambda batch: "host work", device_call=None))
    assert bench.timed_region(cpu) == "host" and bench._subject(cpu, np.zeros((1,), np.float32), plan).calls == 1
    onnx_gpu = _loaded("cuda", types.SimpleNamespace(infer=lambda batch: "host work"))  # no device_call: infer, said so
    assert bench.timed_region(onnx_gpu) == "host"


def test_gpu_rows_are_measured_against_the_gpus_fp16_tensor_peak():
    rows = [{"variant": "gpu", "batch": 8, "median_ms": 10.0, "images_per_s": 800.0, "timed": "device"},
            {"variant": "ort-gpu", "batch": 8, "median_ms": 20.0, "images_per_s": 400.0, "timed": "host"}]
    gpu_peak = peaks.gpu_peaks("NVIDIA H200")
    bench._relate(rows, "none", 10**9, {}, {}, gpu_peak)
    assert rows[0]["peak_precision"] == "gpu_fp16_tensor"
    assert rows[0]["fraction_of_peak"] == pytest.approx(800 * 1e9 / 989.5e12)
    assert rows[1]["fraction_of_peak"] is None  # a host-to-host figure is not the GPU's work


def test_transfers_are_asynchronous_copies_between_pinned_and_device_buffers():
    made, copied = [], []

    class FakeTensor:
        def __init__(self, shape, kwargs):
            self.shape, self.kwargs = shape, kwargs

        def copy_(self, source, non_blocking=False):
            copied.append((self, source, non_blocking))

    class FakeTorch:
        uint8, float32 = "uint8", "float32"

        def _make(self, shape, **kwargs):
            made.append(FakeTensor(shape, kwargs))
            return made[-1]

        zeros = empty = _make

    host_crops, device_crops, device_scores, host_scores = transfers.buffers(FakeTorch(), 8, 224, "cuda")
    assert host_crops.shape == (8, 224, 224, 3) and host_crops.kwargs == {"dtype": "uint8", "pin_memory": True}
    assert host_scores.kwargs == {"dtype": "float32", "pin_memory": True} and host_scores.shape == (2, 8)
    assert device_crops.kwargs["device"] == "cuda" and device_scores.kwargs["device"] == "cuda"
    calls = transfers.copies(host_crops, device_crops, device_scores, host_scores)
    for call in calls.values():
        call()
    assert copied == [(device_crops, host_crops, True), (host_scores, device_scores, True)]


# ---- the kernel micro-benchmark ------------------------------------------------------------------


def test_kernel_timing_rotates_inputs_past_l2_in_blocks_of_back_to_back_calls():
    from specdet.benchmarks import kernels_bench

    x = torch.zeros(4, 3, 16, 16)  # 12 KiB
    inputs = kernels_bench.rotation(x, rotate_bytes=40 * 1024)
    assert len(inputs) == 4 and inputs[0] is x
    assert len({t.data_ptr() for t in inputs}) == 4  # copies, not views of one buffer
    log: list = []
    cuda = StubCuda(log, ms_per_call=0.5)
    seen = []

    def kernel(t):
        seen.append(t.data_ptr())
        cuda.call()

    plan = timing.Plan(warmup=1, iters=2, device_calls=6)
    result = kernels_bench.time_calls(kernel, inputs, plan, timing.CudaEventClock(cuda))
    assert result["median_ms"] == pytest.approx(0.5) and result["blocks"] == 2 and result["calls_per_block"] == 6
    assert result["inputs_rotated"] == 4
    assert seen == [inputs[i % 4].data_ptr() for i in range(13)]  # never the same input twice in a row
    assert log.count("event wait") == 3  # one per block, and one after the warm-up call


# ---- settings in every GPU report ----------------------------------------------------------------


def test_tf32_is_set_for_the_call_and_restored():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with _tf32(torch, True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with _tf32(torch, False):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with _tf32(torch, None):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_both_fp32_baselines_are_registered():
    from specdet.benchmarks import gpu_steps, variants

    assert variants.VARIANTS["torch-cuda-fp32"].precision == "fp32"
    assert variants.VARIANTS["torch-cuda-fp32-tf32"].precision == "fp32-tf32"
    assert {"torch-cuda-fp32", "torch-cuda-fp32-tf32"} <= set(gpu_steps.EAGER)


def test_gpu_math_settings_are_recorded(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine.gpu_math() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)  # no device here to ask
    math = machine.gpu_math()
    assert math["matmul_allow_tf32"] == torch.backends.cuda.matmul.allow_tf32
    assert math["cudnn_allow_tf32"] == torch.backends.cudnn.allow_tf32 and "cudnn_benchmark" in math


@pytest.mark.parametrize("name,fp16,memory", [("NVIDIA H200", 989.5e12, 4.8e12), ("NVIDIA H100 PCIe", 756e12, 2.0e12),
                                              ("NVIDIA H100 80GB HBM3", 989.5e12, 3.35e12),
                                              ("NVIDIA A100-SXM4-80GB", 312e12, 2.039e12), ("NVIDIA A10", 125e12, 0.6e12)])
def test_gpu_peaks_from_the_device_name(name, fp16, memory):
    peak = peaks.gpu_peaks(name)
    assert peak["fp16_tensor_flops_per_s"] == fp16 and peak["memory_bytes_per_s"] == memory


def test_an_unknown_gpu_has_no_peak():
    assert peaks.gpu_peaks("Some Future GPU") is None and peaks.gpu_peaks(None) is None
