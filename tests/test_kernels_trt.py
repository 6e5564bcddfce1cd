"""The plugin path through the toolkit, on this CPU with TensorRT-RTX.

``detect-export --fft plugin`` writes specdet-domain nodes with local-function
fallbacks. With a creator of each op registered (the Python stand-ins of
specdet.kernels.plugin_registry, whose build-time methods need no GPU) and the
fallbacks stripped (specdet.tensorrt, as detect-build does), TensorRT-RTX's parser makes each node a PLUGIN_V3 layer of
our name, namespace, fields and output shape, and the engine builds (ahead of
time, no GPU); without creators and without stripping, the fallback body
parses and builds. Each check runs in a child process: TensorRT-RTX's parser
needs an LD_LIBRARY_PATH fix to import plugin nodes (rtx_library_env).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from specdet.models import checkpoint, spectral

needs_rtx = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx not installed (pip install tensorrt-rtx-cu13)"
)


class TwoOps(torch.nn.Module):
    """Both spectral ops at small sizes: bands of a 16 x 16 image, then the spectrum statistic of a feature map."""

    def __init__(self):
        super().__init__()
        self.edges = spectral.default_band_edges(4)
        self.register_buffer("masks", spectral.radial_band_masks(16, 16, self.edges, "zero"))
        self.conv = torch.nn.Conv2d(12, 8, 3)

    def forward(self, x):
        bands = spectral.band_split(x, self.masks, self.edges, "zero").flatten(1, 2)
        return spectral.spectrum_magnitude_mean(self.conv(bands)).sum(1)


@pytest.fixture(scope="session")
def dual_branch_onnx(tmp_path_factory):
    """``detect-export --fft plugin`` of a dual_branch_tiny checkpoint."""
    from specdet.export import cli
    from specdet.models import create_model

    folder = tmp_path_factory.mktemp("trt-dual-branch")
    torch.manual_seed(0)
    checkpoint.save(create_model("dual_branch_tiny"), folder / "model.pth", threshold=0.5)
    assert cli.main([str(folder / "model.pth"), "-o", str(folder / "model.onnx"), "--fft", "plugin", "--max-batch", "2"]) == 0
    return folder / "model.onnx"


@pytest.fixture(scope="session")
def two_ops_onnx(tmp_path_factory):
    from specdet.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("trt-two-ops") / "two_ops.onnx"
    torch.manual_seed(0)
    export_onnx(TwoOps().eval(), path, example_input=torch.randn(2, 3, 16, 16), fft="plugin", max_batch=4)
    return path


def inspect(path, *args) -> dict:
    from specdet.kernels.plugin_registry import rtx_library_env

    result = subprocess.run(
        [sys.executable, "-m", "specdet.kernels.plugin_registry", str(path), *args],
        env=rtx_library_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.stdout.strip(), f"no report (exit {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(result.stdout)


def test_plugin_export_carries_what_the_creators_read(two_ops_onnx):
    """The nodes' attributes are the plugins' fields; each op has its fallback body."""
    from specdet.kernels.contract import contract

    model = onnx.load(str(two_ops_onnx))
    assert sorted(f.name for f in model.functions if f.domain == "specdet") == ["BandSplit", "SpectrumMagnitudeMean"]
    nodes = {n.op_type: n for n in model.graph.node if n.domain == "specdet"}
    assert set(nodes) == {"BandSplit", "SpectrumMagnitudeMean"}
    for op, node in nodes.items():
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert set(attrs) == set(contract(op)["attributes"])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["BandSplit"].attribute}
    assert attrs["centre"] == b"zero"
    np.testing.assert_array_equal(np.float32(attrs["edges"]), np.float32(spectral.default_band_edges(4)))


@pytest.mark.tensorrt
@needs_rtx
def test_parser_finds_the_band_split_creator_in_dual_branch_tiny(dual_branch_onnx):
    report = inspect(dual_branch_onnx, "--python-creators")
    assert report["parsed"] and report["built"], report["errors"]
    assert report["stripped"] == ["BandSplit"] and report["local_functions"] == []
    [layer] = report["plugin_layers"]
    assert layer["type"] == "LayerType.PLUGIN_V3"
    assert layer["plugin"] == ["BandSplit", "specdet", "1"]
    assert layer["inputs"] == [[[-1, 3, 224, 224], "DataType.FLOAT"]]
    assert layer["outputs"] == [[[-1, 4, 3, 224, 224], "DataType.FLOAT"]]
    [created] = report["created"]
    assert created["centre"] == "zero"
    np.testing.assert_allclose(created["edges"], np.float32(spectral.default_band_edges(4)), rtol=0, atol=0)

    fallback = inspect(dual_branch_onnx, "--keep-fallbacks")
    assert fallback["parsed"] and fallback["built"], fallback["errors"]
    assert fallback["registered_specdet_ops"] == [] and fallback["plugin_layers"] == []
    assert fallback["local_functions"] == ["BandSplit"]
    assert fallback["num_layers"] > report["num_layers"]  # the body is inlined: many layers instead of one


@pytest.mark.tensorrt
@needs_rtx
def test_parser_finds_both_creators_and_the_fallbacks_build_without_them(two_ops_onnx):
    report = inspect(two_ops_onnx, "--python-creators")
    assert report["parsed"] and report["built"], report["errors"]
    layers = {layer["plugin"][0]: layer for layer in report["plugin_layers"]}
    assert set(layers) == {"BandSplit", "SpectrumMagnitudeMean"}
    assert all(layer["plugin"][1:] == ["specdet", "1"] for layer in layers.values())
    assert layers["BandSplit"]["outputs"] == [[[-1, 4, 3, 16, 16], "DataType.FLOAT"]]
    assert layers["SpectrumMagnitudeMean"]["inputs"] == [[[-1, 8, 14, 14], "DataType.FLOAT"]]
    assert layers["SpectrumMagnitudeMean"]["outputs"] == [[[-1, 8], "DataType.FLOAT"]]

    fallback = inspect(two_ops_onnx, "--keep-fallbacks")
    assert fallback["parsed"] and fallback["built"] and fallback["plugin_layers"] == []


@pytest.mark.tensorrt
@needs_rtx
@pytest.mark.skipif(not os.environ.get("SPECDET_TRT_PLUGINS_LIB"),
                    reason="SPECDET_TRT_PLUGINS_LIB not set: the C++ plugin library is built where TensorRT headers are")
def test_parser_finds_the_cpp_plugin_library(two_ops_onnx):
    report = inspect(two_ops_onnx, "--plugins", os.environ["SPECDET_TRT_PLUGINS_LIB"])
    assert report["parsed"] and report["built"], report["errors"]
    assert {layer["plugin"][0] for layer in report["plugin_layers"]} == {"BandSplit", "SpectrumMagnitudeMean"}
