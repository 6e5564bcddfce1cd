"""The kernel build (CMake, kernels/CMakeLists.txt): the CUDA library with nvcc, and the kernels run on the CPU.

- The CUDA library is compiled for one architecture when nvcc is on PATH (CI
  and this machine have it, without a GPU): it must export every launch
  function, carry device code, load through ctypes, and pass the C++ host
  program's checks (validation, workspace sizes: nothing that needs a GPU).
  Launches fail cleanly without a GPU.
- The CPU emulation (kernels/common/emulation.h) compiles the very kernel
  sources as C++ and runs them: both methods (the DFT kernels; the cuFFT
  method's own kernels around an emulated cuFFT), both dtypes, against the
  contract files' golden data and at 224 x 224.
- The TensorRT plugin sources compile where TensorRT headers are
  (``$TensorRT_ROOT``); nowhere else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from specdet.kernels import build as kbuild
from specdet.kernels import contract, library, reference
from specdet.models import spectral

LAUNCH_FUNCTIONS = [
    f"specdet_{op}{suffix}"
    for op in ("band_split", "spectrum_magnitude_mean")
    for suffix in ("", "_validate", "_workspace_size", "_prepare", "_resolved_method", "_params_size")
] + ["specdet_fft_plans_create", "specdet_fft_plans_destroy", "specdet_status_string", "specdet_kernels_abi_version"]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not on PATH")


@pytest.fixture(scope="module")
def emulation(tmp_path_factory) -> library.KernelLibrary:
    _need("cmake")
    if kbuild.find_cuda_include() is None:
        pytest.skip("no CUDA runtime headers (toolkit or pip nvidia-cuda-runtime) for the emulation build")
    result = kbuild.build(tmp_path_factory.mktemp("kernels-emu"), cuda=False, emulation=True)
    return library.load_emulation(result.emulation)


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory) -> kbuild.KernelBuild:
    _need("cmake")
    if kbuild.find_nvcc() is None:
        pytest.skip("nvcc not found: the CUDA build is checked where the CUDA toolkit is installed (CI)")
    return kbuild.build(tmp_path_factory.mktemp("kernels-cuda"), archs="80")


# ---- the CUDA library ----


def test_cuda_library_exports_the_launch_functions(cuda_build):
    assert cuda_build.kernels is not None
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(cuda_build.kernels)], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert set(LAUNCH_FUNCTIONS) <= exported
    assert not [s for s in exported if s.startswith("_Z")], "C++ internals should stay hidden"
    sections = subprocess.run(["readelf", "-S", str(cuda_build.kernels)], capture_output=True, text=True, check=True).stdout
    assert ".nv_fatbin" in sections  # device code for sm_80
    needed = subprocess.run(["readelf", "-d", str(cuda_build.kernels)], capture_output=True, text=True, check=True).stdout
    assert "libcufft.so" in needed and "libcudart.so" in needed


def test_host_program_compiles_against_the_headers_and_passes(cuda_build):
    assert cuda_build.host_check is not None
    result = subprocess.run([str(cuda_build.host_check)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: 0 failure(s)" in result.stdout


def test_cuda_library_loads_and_fails_cleanly_without_a_gpu(cuda_build):
    lib = library.KernelLibrary(cuda_build.kernels)
    assert not lib.is_emulation
    params = library.band_split_params((32, 3, 224, 224), spectral.default_band_edges(4), "zero", "float16")
    assert lib.validate("BandSplit", params) and lib.resolved_method("BandSplit", params) == "cufft"
    assert lib.workspace_size("BandSplit", params) > 32 * 3 * 4 * 224 * 113 * 8
    bad = library.band_split_params((1, 1, 16, 16), [0.3, 0.2], "zero", "float32")
    assert not lib.validate("BandSplit", bad) and lib.workspace_size("BandSplit", bad) == 0
    with pytest.raises(library.KernelError, match="INVALID_ARGUMENT"):
        lib.launch("BandSplit", bad, 1, 1, 0, 0, None, 0)
    import torch

    if not torch.cuda.is_available():
        small = library.band_split_params((1, 1, 16, 16), [0.2], "zero", "float32", "dft")
        buffers = [np.zeros(n, np.uint8) for n in (1024, 4096, lib.workspace_size("BandSplit", small))]
        with pytest.raises(library.KernelError, match="CUDA"):
            lib.launch("BandSplit", small, *(b.ctypes.data for b in buffers[:2]), buffers[2].ctypes.data, buffers[2].size, None, 0)


def test_plugin_sources_compile_against_tensorrt_headers(cuda_build):
    root = os.environ.get("TensorRT_ROOT")
    include = next((p for p in (Path(root or "/nonexistent") / "include", Path(root or "/nonexistent")) if (p / "NvInferRuntime.h").is_file()), None)
    if include is None:
        pytest.skip("no TensorRT headers ($TensorRT_ROOT): the plugin library is built where TensorRT is installed")
    assert cuda_build.plugins is not None, "CMake found the headers but built no plugin library"
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(cuda_build.plugins)], capture_output=True, text=True, check=True).stdout
    assert "getCreators" in symbols and "setLoggerFinder" in symbols


# ---- the kernels, run on the CPU ----


CASES = [(op, case.name) for op in contract.OP_DIRS for case in contract.golden_cases(op)]


@pytest.mark.parametrize("method", ["dft", "cufft"])
@pytest.mark.parametrize("op,name", CASES)
def test_emulated_kernels_meet_the_contract_on_the_golden_data(emulation, op, name, method):
    case = next(c for c in contract.golden_cases(op) if c.name == name)
    for dtype in ("float32", "float16"):
        y = emulation.run_host(op, case.x.astype(dtype), case.attributes, method)
        assert y.dtype == np.dtype(dtype)
        result = contract.compare(op, dtype, y, case.y)
        assert result.ok, f"{op}/{name} {method} {dtype}: {result}"


@pytest.mark.parametrize("method", ["dft", "cufft"])
def test_emulated_band_split_at_224(emulation, method):
    edges = spectral.default_band_edges(4)
    x = np.random.default_rng(3).standard_normal((1, 1, 224, 224)).astype(np.float32)
    y = emulation.run_host("BandSplit", x, {"edges": edges, "centre": "zero"}, method)
    result = contract.compare("BandSplit", "float32", y, reference.band_split(x, edges, "zero"))
    assert result.ok, result
    np.testing.assert_allclose(y.sum(1), x, atol=2e-5)


def test_emulated_spectrum_statistic_of_a_feature_map(emulation):
    x = np.random.default_rng(4).standard_normal((2, 32, 16, 16)).astype(np.float16)  # the tiny SSCA map
    for method in ("dft", "cufft"):
        y = emulation.run_host("SpectrumMagnitudeMean", x, {}, method)
        assert contract.compare("SpectrumMagnitudeMean", "float16", y, reference.spectrum_magnitude_mean(x)).ok


def test_emulated_launch_refuses_what_the_contract_excludes(emulation):
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(library.KernelError, match="INVALID_ARGUMENT"):
        emulation.run_host("BandSplit", x, {"edges": [0.3, 0.1], "centre": "zero"})
    with pytest.raises(library.KernelError, match="INVALID_ARGUMENT"):
        emulation.run_host("BandSplit", x, {"edges": [float("nan")], "centre": "zero"})
    with pytest.raises(Exception, match="at most 15"):
        emulation.run_host("BandSplit", x, {"edges": list(np.linspace(0.01, 0.6, 16)), "centre": "zero"})
    with pytest.raises(Exception, match="float32 or float16"):
        emulation.run_host("SpectrumMagnitudeMean", x.astype(np.float64))
    params = library.band_split_params(x.shape, [0.2], "zero", "float32", "dft")
    with pytest.raises(library.KernelError, match="WORKSPACE"):
        emulation.launch("BandSplit", params, x.ctypes.data, x.ctypes.data, 0, 0, None, 0)
    empty = library.band_split_params((0, 1, 8, 8), [0.2], "zero", "float32", "dft")
    emulation.launch("BandSplit", empty, 0, 0, 0, 0, None, 0)  # nothing to do


def test_build_cli_reports_a_missing_compiler(monkeypatch, capsys):
    monkeypatch.setattr(kbuild, "find_nvcc", lambda: None)
    assert kbuild.main(["--build-dir", "/nonexistent/never-created"]) == 2
    assert "nvcc not found" in capsys.readouterr().err


def test_torch_op_glue_runs_on_the_emulation(emulation, monkeypatch):
    """The torch ops' CUDA path (shapes, parameters, workspace, fallbacks) with the emulation in place of the GPU."""
    import contextlib

    import torch

    from specdet.kernels import torch_ops

    class Stream:
        cuda_stream = 0

    monkeypatch.setattr(torch_ops, "_library", lambda device: emulation)
    monkeypatch.setattr(torch_ops, "_plans", {})
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    edges = spectral.default_band_edges(4)
    for method in ("dft", "cufft"):
        monkeypatch.setenv("SPECDET_KERNELS_METHOD", method)
        for dtype, name in ((torch.float32, "float32"), (torch.float16, "float16")):
            x = torch.randn(2, 3, 16, 16).to(dtype)
            x64 = x.double().numpy()
            bands = torch_ops.band_split_cuda(x[:, :, :, :], edges, "seed")
            assert bands.shape == (2, 4, 3, 16, 16) and bands.dtype == dtype
            assert contract.compare("BandSplit", name, bands.double().numpy(), reference.band_split(x64, edges, "seed")).ok
            stat = torch_ops.spectrum_magnitude_mean_cuda(x.transpose(2, 3))  # not contiguous
            expected = reference.spectrum_magnitude_mean(x64.transpose(0, 1, 3, 2))
            assert stat.shape == (2, 3) and contract.compare("SpectrumMagnitudeMean", name, stat.double().numpy(), expected).ok
    assert torch_ops.band_split_cuda(torch.randn(0, 3, 8, 8), edges, "zero").shape == (0, 4, 3, 8, 8)
    wide = torch.randn(1, 1, 8, 8, dtype=torch.float64)  # not a kernel dtype: the torch.fft reference
    masks = spectral.radial_band_masks(8, 8, edges, "zero").double()
    torch.testing.assert_close(torch_ops.band_split_cuda(wide, edges, "zero"), spectral.band_split_reference(wide, masks))


def _emulated_graphs(emulation, batches, stream: int) -> tuple[library.FftPlans, list[int], list]:
    """Per batch size: the band split warmed up (plans made), then captured on ``stream``; the graph ids."""
    import ctypes

    lib = emulation._lib
    lib.specdet_emu_capture_begin.argtypes = lib.specdet_emu_capture_end.argtypes = [ctypes.c_void_p]
    lib.specdet_emu_capture_begin.restype = None
    plans, graphs, buffers = emulation.create_plans(), [], []
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8)).astype(np.float32)
        params, out_shape = library.op_params("BandSplit", x.shape, {"edges": [0.2], "centre": "zero"}, "float32", "cufft")
        y, workspace = np.empty(out_shape, np.float32), np.empty(emulation.workspace_size("BandSplit", params), np.uint8)
        buffers.append((x, y, workspace))  # a graph's buffers live as long as the graph
        emulation.launch("BandSplit", params, x.ctypes.data, y.ctypes.data, workspace.ctypes.data, workspace.size, plans, stream)
        lib.specdet_emu_capture_begin(stream)
        emulation.launch("BandSplit", params, x.ctypes.data, y.ctypes.data, workspace.ctypes.data, workspace.size, plans, stream)
        graphs.append(lib.specdet_emu_capture_end(stream))
    return plans, graphs, buffers


def test_captured_plans_outlive_more_shapes_than_the_cache_holds(emulation):
    """Issue 20's latent bug: graphs for 6 batch sizes (12 plans, the cache keeps 8) and the oldest still replays.

    A CUDA graph bakes in each cuFFT plan's work area; the cache used to evict the oldest shape's plans (freeing
    that area) and a replay of the first graph then read freed memory. Here the emulated replay fails when a
    captured plan was destroyed.
    """
    live = emulation._lib.specdet_emu_live_fft_plans
    before = live()
    plans, graphs, _buffers = _emulated_graphs(emulation, range(1, 7), stream=0x51)
    assert all(g >= 0 for g in graphs)
    assert live() - before == 12  # every captured plan kept: the cache grew past its 8
    for graph in (graphs[0], *graphs):
        assert emulation._lib.specdet_emu_graph_replay(graph) == 0, f"graph {graph} replayed a destroyed plan"
    del plans  # specdet_fft_plans_destroy: pinned plans go with the cache
    assert live() == before


def test_plans_never_captured_are_still_evicted(emulation):
    """Without capture the cache stays bounded: 6 batch sizes, both directions, 8 plans live at most."""
    live = emulation._lib.specdet_emu_live_fft_plans
    before = live()
    plans = emulation.create_plans()
    for batch in range(1, 7):
        x = np.zeros((batch, 1, 8, 8), np.float32)
        params, out_shape = library.op_params("BandSplit", x.shape, {"edges": [0.2], "centre": "zero"}, "float32", "cufft")
        y, workspace = np.empty(out_shape, np.float32), np.empty(emulation.workspace_size("BandSplit", params), np.uint8)
        emulation.launch("BandSplit", params, x.ctypes.data, y.ctypes.data, workspace.ctypes.data, workspace.size, plans, 0)
    assert live() - before == 8
    del plans
    assert live() == before
