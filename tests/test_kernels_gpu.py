"""The CUDA kernels on a GPU: the contract's golden data and tolerances, the torch ops, the models with them.

Marked ``gpu``; skipped where ``torch.cuda.is_available()`` is False. The
kernel library is built on first use for the GPU's own architecture (needs
nvcc), or taken from ``$SPECDET_KERNELS_LIB``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specdet.kernels import contract, library, reference
from specdet.models import spectral

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the kernels are compiled here, run on a GPU"),
]

DTYPES = {"float32": torch.float32, "float16": torch.float16}


@pytest.fixture(scope="module")
def lib() -> library.KernelLibrary:
    major, minor = torch.cuda.get_device_capability()
    return library.load(archs=f"{major}{minor}")


def run(lib, op: str, x: torch.Tensor, attributes: dict, method: str, stream: torch.cuda.Stream | None = None) -> torch.Tensor:
    dtype = {torch.float32: "float32", torch.float16: "float16"}[x.dtype]
    params, out_shape = library.op_params(op, x.shape, attributes, dtype, method)
    y = x.new_empty(out_shape)
    size = lib.workspace_size(op, params)
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=x.device)
    plans = lib.create_plans()
    stream = stream or torch.cuda.current_stream()
    lib.launch(op, params, x.data_ptr(), y.data_ptr(), workspace.data_ptr(), size, plans, stream.cuda_stream)
    stream.synchronize()
    return y


@pytest.mark.parametrize("method", ["dft", "cufft"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op", list(contract.OP_DIRS))
def test_golden_data_within_the_contract(lib, op, dtype, method):
    for case in contract.golden_cases(op):
        x = torch.from_numpy(case.x).to("cuda", DTYPES[dtype])
        y = run(lib, op, x, case.attributes, method).double().cpu().numpy()
        result = contract.compare(op, dtype, y, case.y)
        assert result.ok, f"{op}/{case.name} {method} {dtype}: {result}"


@pytest.mark.parametrize("method", ["dft", "cufft"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_band_split_at_the_models_size(lib, dtype, method):
    edges = spectral.default_band_edges(4)
    for centre in spectral.CENTRES:
        x16 = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float16)
        y = run(lib, "BandSplit", torch.from_numpy(x16).to("cuda", DTYPES[dtype]), {"edges": edges, "centre": centre}, method)
        result = contract.compare("BandSplit", dtype, y.double().cpu().numpy(), reference.band_split(x16, edges, centre))
        assert result.ok, f"{centre} {method} {dtype}: {result}"


@pytest.mark.parametrize("method", ["dft", "cufft"])
def test_spectrum_statistic_on_clip_sized_maps(lib, method):
    for shape in [(8, 1024, 16, 16), (4, 128, 16, 16), (2, 64, 14, 14)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        y = run(lib, "SpectrumMagnitudeMean", torch.from_numpy(x).cuda(), {}, method)
        assert contract.compare("SpectrumMagnitudeMean", "float32", y.cpu().numpy(), reference.spectrum_magnitude_mean(x)).ok


def test_side_stream_and_changing_batch_sizes(lib):
    edges = spectral.default_band_edges(4)
    stream = torch.cuda.Stream()
    plans = lib.create_plans()
    for batch in (1, 3, 2, 9, 1):
        x = torch.randn(batch, 3, 32, 32, device="cuda")
        params = library.band_split_params(x.shape, edges, "zero", "float32", "cufft")
        y = x.new_empty((batch, 4, 3, 32, 32))
        workspace = torch.empty(lib.workspace_size("BandSplit", params), dtype=torch.uint8, device="cuda")
        with torch.cuda.stream(stream):
            lib.launch("BandSplit", params, x.data_ptr(), y.data_ptr(), workspace.data_ptr(), workspace.numel(), plans, stream.cuda_stream)
        stream.synchronize()
        expected = reference.band_split(x.cpu().numpy(), edges, "zero")
        assert contract.compare("BandSplit", "float32", y.cpu().numpy(), expected).ok


def test_graphs_of_more_shapes_than_the_plan_cache_holds_still_replay(lib):
    """Issue 20's plan-cache bug on the GPU: CUDA graphs of the cuFFT band split for 6 batch sizes (12 plans, the
    cache keeps 8 unpinned), freed memory then refilled with NaN, and the oldest graph replayed: its plans were
    pinned at capture, so it must still give the contract's result (the emulation test shows the plans live on)."""
    edges = spectral.default_band_edges(4)
    plans, graphs = lib.create_plans(), []
    side = torch.cuda.Stream()
    for batch in range(1, 7):
        x = torch.randn(batch, 3, 32, 32, device="cuda")
        params = library.band_split_params(x.shape, edges, "zero", "float32", "cufft")
        y = x.new_empty((batch, 4, 3, 32, 32))
        workspace = torch.empty(lib.workspace_size("BandSplit", params), dtype=torch.uint8, device="cuda")
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the warm-up makes the plans outside the capture
            lib.launch("BandSplit", params, x.data_ptr(), y.data_ptr(), workspace.data_ptr(), workspace.numel(), plans,
                       side.cuda_stream)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            lib.launch("BandSplit", params, x.data_ptr(), y.data_ptr(), workspace.data_ptr(), workspace.numel(), plans,
                       torch.cuda.current_stream().cuda_stream)
        graphs.append((graph, x, y, workspace))
    torch.cuda.synchronize()
    junk = torch.full((256, 2**20), float("nan"), device="cuda")  # whatever was freed is now NaN
    graph, x, y, _ = graphs[0]
    y.zero_()
    graph.replay()
    torch.cuda.synchronize()
    del junk
    expected = reference.band_split(x.cpu().numpy(), edges, "zero")
    assert contract.compare("BandSplit", "float32", y.cpu().numpy(), expected).ok


@pytest.mark.parametrize("method", ["auto", "dft", "cufft"])
def test_torch_ops_run_our_kernels_on_cuda(lib, monkeypatch, method):
    from specdet.kernels import torch_ops

    monkeypatch.setenv("SPECDET_KERNELS_METHOD", method)
    torch_ops.register()
    edges = spectral.default_band_edges(4)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(2, 3, 224, 224, device="cuda").to(dtype)
        bands = torch.ops.specdet.band_split(x, edges, "zero")
        stat = torch.ops.specdet.spectrum_magnitude_mean(x)
        name = "float32" if dtype == torch.float32 else "float16"
        x64 = x.double().cpu().numpy()
        assert bands.dtype == dtype and stat.dtype == dtype
        assert contract.compare("BandSplit", name, bands.double().cpu().numpy(), reference.band_split(x64, edges, "zero")).ok
        assert contract.compare("SpectrumMagnitudeMean", name, stat.double().cpu().numpy(), reference.spectrum_magnitude_mean(x64)).ok
    cpu = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(  # the CPU keeps the torch.fft implementation
        torch.ops.specdet.spectrum_magnitude_mean(cpu), spectral.spectrum_magnitude_mean_reference(cpu), rtol=0, atol=0
    )


@pytest.mark.parametrize("name", ["dual_branch_tiny", "rine_ssca_tiny"])
def test_models_forward_with_the_kernels(lib, name):
    from specdet.kernels.torch_ops import use_kernels
    from specdet.models import ScoringModule, create_model

    torch.manual_seed(0)
    model = ScoringModule(create_model(name)).eval().cuda()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        plain = model(x)
        with use_kernels():
            ours = model(x)
    for a, b in zip(plain, ours):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
