"""The float64 NumPy references of the spectral ops against torch.fft, the contract files and their golden data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specdet.export import plugin_ops
from specdet.kernels import contract, reference
from specdet.kernels.plugin_registry import OPS
from specdet.models import spectral

EDGE_SETS = [spectral.default_band_edges(4), spectral.default_band_edges(2), [0.1, 0.3], [], [-0.1, 0.25, 0.7]]


@pytest.mark.parametrize("centre", spectral.CENTRES)
def test_masks_are_the_models_masks(centre):
    for h, w in [(224, 224), (16, 16), (14, 14), (13, 10), (7, 1), (1, 9), (2, 3), (225, 224), (100, 64)]:
        for edges in EDGE_SETS:
            ours = reference.band_masks(h, w, edges, centre)
            theirs = spectral.radial_band_masks(h, w, edges, centre).numpy()
            assert np.array_equal(ours, theirs), (h, w, edges, centre)
            assert np.array_equal(ours.sum(0), np.ones((h, w)))


@pytest.mark.parametrize(
    "shape,centre,edges",
    [
        ((2, 3, 224, 224), "zero", spectral.default_band_edges(4)),
        ((1, 2, 16, 16), "seed", spectral.default_band_edges(4)),
        ((2, 1, 14, 14), "zero", [0.1, 0.3]),
        ((1, 2, 13, 10), "seed", [0.15, 0.4]),
        ((1, 1, 7, 1), "zero", []),
    ],
)
def test_band_split_reference_is_torch_fft_in_float64(shape, centre, edges):
    x = np.random.default_rng(0).standard_normal(shape)
    ours = reference.band_split(x, edges, centre)
    masks = spectral.radial_band_masks(shape[-2], shape[-1], edges, centre).double()
    theirs = spectral.band_split_reference(torch.from_numpy(x), masks).numpy()
    assert ours.shape == (shape[0], len(edges) + 1, *shape[1:])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    if centre == "zero":  # symmetric masks: the bands sum back to the image
        np.testing.assert_allclose(ours.sum(1), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (4, 32, 16, 16), (2, 5, 14, 14), (1, 2, 13, 10), (3, 2, 5, 1)])
def test_spectrum_magnitude_mean_reference_is_torch_fft_in_float64(shape):
    x = np.random.default_rng(1).standard_normal(shape)
    theirs = spectral.spectrum_magnitude_mean_reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(reference.spectrum_magnitude_mean(x), theirs, rtol=1e-13, atol=0)


def test_reference_takes_float16_exactly_and_rejects_bad_input():
    x = np.random.default_rng(2).standard_normal((1, 1, 8, 8)).astype(np.float16)
    np.testing.assert_array_equal(reference.spectrum_magnitude_mean(x), reference.spectrum_magnitude_mean(x.astype(np.float64)))
    with pytest.raises(ValueError, match="strictly increasing"):
        reference.band_split(x, [0.3, 0.3])
    with pytest.raises(ValueError, match="centre"):
        reference.band_split(x, [0.3], "middle")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        reference.spectrum_magnitude_mean(x[0])
    with pytest.raises(KeyError):
        reference.run("DFT", x)


@pytest.mark.parametrize("op", OPS)
def test_contract_describes_the_onnx_node_and_the_plugin(op):
    c = contract.contract(op)
    assert c["op"] == op
    assert c["onnx"] == {**c["onnx"], "domain": plugin_ops.PLUGIN_DOMAIN, "version": plugin_ops.DOMAIN_VERSION, "op_type": op}
    assert c["tensorrt_plugin"]["name"] == op
    assert c["tensorrt_plugin"]["namespace"] == "specdet" and c["tensorrt_plugin"]["version"] == "1"
    assert op in {p.onnx_name for p in plugin_ops.PLUGIN_OPS}
    schema = {"BandSplit": plugin_ops.BAND_SPLIT, "SpectrumMagnitudeMean": plugin_ops.SPECTRUM_MAGNITUDE_MEAN}[op].op_schema
    assert set(c["attributes"]) == set(schema.attributes)
    assert [i["dtypes"] for i in c["inputs"]] == [["float32", "float16"]]
    for dtype in ("float32", "float16"):
        atol, rtol = contract.tolerance(op, dtype)
        assert 0 < atol <= 1e-3 and 0 < rtol <= 1e-3
    names = [g["name"] for g in c["golden"]]
    assert len(names) == len(set(names)) >= 5
    sides = {s for g in c["golden"] for s in g["shape"][2:]}
    assert {16, 14, 1} <= sides and any(s % 2 for s in sides)  # even, odd and the sizes the models use


@pytest.mark.parametrize("op", OPS)
def test_golden_data_is_the_float64_reference_and_torch_fft(op):
    specs = {g["name"]: g for g in contract.contract(op)["golden"]}
    for case in contract.golden_cases(op):
        spec = specs[case.name]
        assert case.x.dtype == np.float16 and list(case.x.shape) == spec["shape"]
        np.testing.assert_array_equal(case.x, contract.golden_input(spec))
        np.testing.assert_allclose(case.y, reference.run(op, case.x, case.attributes), rtol=0, atol=1e-13)
        x = torch.from_numpy(case.x.astype(np.float64))
        if op == "BandSplit":
            edges, centre = case.attributes["edges"], case.attributes["centre"]
            masks = spectral.radial_band_masks(x.shape[-2], x.shape[-1], edges, centre).double()
            theirs = spectral.band_split_reference(x, masks)
        else:
            theirs = spectral.spectrum_magnitude_mean_reference(x)
        np.testing.assert_allclose(case.y, theirs.numpy(), rtol=0, atol=1e-12)


def test_compare_applies_the_tolerance_rule():
    expected = np.array([0.0, 1.0, -2.0])
    atol, rtol = contract.tolerance("BandSplit", "float16")
    assert contract.compare("BandSplit", "float16", expected + atol * 0.9, expected).ok
    assert not contract.compare("BandSplit", "float16", expected + atol + 3 * rtol, expected).ok
    assert not contract.compare("BandSplit", "float16", expected[:2], expected).ok
    assert not contract.compare("BandSplit", "float32", np.array([np.nan, 1.0, -2.0]), expected).ok


def test_torch_ops_keep_the_torch_fft_path_on_the_cpu():
    from specdet.kernels import torch_ops

    torch_ops.register()
    torch_ops.register()  # idempotent
    x = torch.randn(2, 3, 16, 16)
    edges = spectral.default_band_edges(4)
    masks = spectral.radial_band_masks(16, 16, edges, "zero")
    with torch_ops.use_kernels():
        assert spectral.custom_ops_enabled()
        bands = spectral.band_split(x, masks, edges, "zero")
        stat = spectral.spectrum_magnitude_mean(x)
    assert not spectral.custom_ops_enabled()
    torch.testing.assert_close(bands, spectral.band_split_reference(x, masks), rtol=0, atol=0)
    torch.testing.assert_close(stat, spectral.spectrum_magnitude_mean_reference(x), rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_kernels_bench_says_it_needs_a_gpu(capsys, tmp_path):
    from specdet.benchmarks import kernels_bench

    assert kernels_bench.main(["--out", str(tmp_path / "never.json")]) == 2
    assert "no CUDA device here, nothing measured" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()
