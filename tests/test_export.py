"""``export_onnx``: user-style spectral modules and our plugin ops to validated ONNX files.

Each export takes a couple of seconds on a 2-core CPU, so every (module, mode)
is exported once per module of tests and the files are shared.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from specdet.errors import ExportValidationError, SpecdetError
from specdet.export.onnx import ExportResult, export_onnx, resolve_fft
from specdet.models import spectral
from specdet.models.spectral import band_split, default_band_edges, radial_band_masks, spectrum_magnitude_mean
from spectral_modules import AmplitudePhaseMix, FourierUnit, GlobalFilterNet, SpectralConv2d

ATOL = 1e-4
MAX_BATCH = 8
THIRD_BATCH = 3  # export_onnx validates at the example's batch (2) and at 1


def _global_filter_net():
    return GlobalFilterNet(16, 20), (3, 16, 20)


def _fourier_unit():
    return FourierUnit(4), (4, 13, 14)


def _amplitude_phase_mix():
    return AmplitudePhaseMix(12, 15), (3, 12, 15)


def _spectral_conv():
    return SpectralConv2d(3, 4), (3, 15, 12)


class ComplexEdgeCases(nn.Module):
    """Complex arithmetic the four modules above do not use: each line once broke the lowering."""

    def __init__(self, size: int = 8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size, size, dtype=torch.cfloat) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, size, size]
        z = torch.fft.fft2(x)
        z = (z + x) / (1 + 2j)  # pair + real tensor; pair / Python complex
        z = (2 - 1j) - z.real + z * self.weight.real  # Python complex - real tensor; .real of a complex parameter
        z = z @ self.weight + torch.fft.ifft(x, dim=-1)  # the @ operator; ifft of a real input
        z[..., 0] = 0.5j  # item assignment
        return torch.fft.ifft2(z).real + z.abs()


def _complex_edge_cases():
    return ComplexEdgeCases(8), (3, 8, 8)


MODULES = {
    "GlobalFilterNet": _global_filter_net,
    "FourierUnit": _fourier_unit,
    "AmplitudePhaseMix": _amplitude_phase_mix,
    "SpectralConv2d": _spectral_conv,
    "ComplexEdgeCases": _complex_edge_cases,
}


@dataclasses.dataclass
class Exported:
    module: nn.Module
    path: Path
    fft: str
    item_shape: tuple[int, ...]  # input shape without the batch
    result: ExportResult


def _inputs(item_shape, batch: int, seed: int) -> torch.Tensor:
    return torch.randn((batch, *item_shape), generator=torch.Generator().manual_seed(seed))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_outputs(module: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.inference_mode():
        out = module(x)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _all_nodes(model: onnx.ModelProto):
    yield from model.graph.node
    for function in model.functions:
        yield from function.node


@pytest.fixture(
    scope="module",
    params=[(name, fft) for name in MODULES for fft in ("dft", "matmul")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def exported(request, tmp_path_factory) -> Exported:
    name, fft = request.param
    torch.manual_seed(0)
    module, item_shape = MODULES[name]()
    module.eval()
    path = tmp_path_factory.mktemp("export") / f"{name}.{fft}.onnx"
    result = export_onnx(
        module, path, example_input=_inputs(item_shape, 2, seed=1), fft=fft, max_batch=MAX_BATCH, progress=False
    )
    return Exported(module, path, fft, item_shape, result)


def test_export_result_describes_the_file(exported):
    result = exported.result
    assert result.path == exported.path and exported.path.is_file()
    assert result.fft == exported.fft
    assert result.opset == 18 and result.max_batch == MAX_BATCH
    assert result.input_name == "input" and result.output_names == ["output"]
    assert result.size_bytes == exported.path.stat().st_size > 0
    assert result.validation.batch_sizes == [2, 1]
    (difference,) = result.validation.outputs
    assert difference.name == "output" and difference.max_abs <= ATOL
    # No temporary file is left beside the result.
    assert sorted(p.name for p in exported.path.parent.iterdir()) == [exported.path.name]


def test_file_passes_the_onnx_checker_with_a_symbolic_batch(exported):
    onnx.checker.check_model(str(exported.path), full_check=True)
    model = onnx.load(str(exported.path))
    (graph_input,) = model.graph.input
    for value in (graph_input, *model.graph.output):
        batch = value.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value"), f"{value.name} has a fixed batch axis"
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:]] == list(exported.item_shape)
    # ONNX has no complex tensors to hold: every tensor is real.
    complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    assert all(init.data_type not in complex_types for init in model.graph.initializer)


def test_onnx_runtime_matches_pytorch_at_another_batch_size(exported):
    session = _session(exported.path)
    x = _inputs(exported.item_shape, THIRD_BATCH, seed=2)
    (got,) = session.run(None, {"input": x.numpy()})
    (expected,) = _torch_outputs(exported.module, x)
    assert got.shape == expected.shape and got.shape[0] == THIRD_BATCH
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_fft_mode_decides_the_transform_nodes(exported):
    op_types = {node.op_type for node in _all_nodes(onnx.load(str(exported.path)))}
    if exported.fft == "dft":
        assert "DFT" in op_types
    else:
        assert "DFT" not in op_types
        assert "MatMul" in op_types


# --- plugin mode: our spectral ops as specdet-domain nodes with matmul bodies ---


class BandStatistics(nn.Module):
    """Uses both plugin ops, plus other torch.fft code that gets the matmul lowering; two outputs."""

    def __init__(self, h: int, w: int, centre: str = "zero"):
        super().__init__()
        self.edges, self.centre = default_band_edges(3), centre
        self.register_buffer("masks", radial_band_masks(h, w, self.edges, centre))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(3 * 4 + 3, 2)

    def forward(self, x: torch.Tensor):
        bands = band_split(x, self.masks, self.edges, self.centre)  # [B, K, 3, H, W]
        k = bands.shape[1]
        features = torch.relu(self.conv(bands.flatten(0, 1)))  # [B*K, 4, H, W]
        stats = spectrum_magnitude_mean(features).unflatten(0, (-1, k)).flatten(1)  # [B, K*4]
        plain = torch.fft.rfft2(x, norm="ortho").abs().mean(dim=(-2, -1))  # [B, 3]: not a plugin op
        return self.head(torch.cat([stats, plain], dim=1)), bands.sum(dim=1)


@pytest.fixture(scope="module", params=[(14, 14, "zero"), (16, 20, "zero"), (13, 15, "seed")], ids=lambda p: f"{p[0]}x{p[1]}-{p[2]}")
def plugin_export(request, tmp_path_factory) -> Exported:
    h, w, centre = request.param
    torch.manual_seed(0)
    module = BandStatistics(h, w, centre).eval()
    path = tmp_path_factory.mktemp("plugin") / "bands.onnx"
    result = export_onnx(module, path, example_input=_inputs((3, h, w), 2, seed=1), fft="plugin", max_batch=MAX_BATCH, progress=False)
    return Exported(module, path, "plugin", (3, h, w), result)


def test_plugin_graph_has_specdet_nodes_and_local_functions(plugin_export):
    model = onnx.load(str(plugin_export.path))
    onnx.checker.check_model(model, full_check=True)
    nodes = {node.op_type: node for node in model.graph.node if node.domain == "specdet"}
    assert set(nodes) == {"BandSplit", "SpectrumMagnitudeMean"}
    functions = {(f.domain, f.name): f for f in model.functions}
    assert set(functions) == {("specdet", "BandSplit"), ("specdet", "SpectrumMagnitudeMean")}
    assert {(o.domain, o.version) for o in model.opset_import} >= {("specdet", 1), ("", 18)}
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["BandSplit"].attribute}
    assert attributes["centre"] == plugin_export.module.centre.encode()
    np.testing.assert_allclose(attributes["edges"], np.float32(plugin_export.module.edges))
    # The bodies are the matmul lowering: no DFT anywhere, so every runtime can inline them.
    assert "DFT" not in {node.op_type for node in _all_nodes(model)}
    assert all(f.node for f in functions.values())
    assert plugin_export.result.output_names == ["output_0", "output_1"]


def test_plugin_file_runs_in_onnx_runtime_like_pytorch(plugin_export):
    session = _session(plugin_export.path)
    x = _inputs(plugin_export.item_shape, THIRD_BATCH, seed=3)
    got = session.run(None, {"input": x.numpy()})
    expected = _torch_outputs(plugin_export.module, x)
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"]
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=ATOL, rtol=0)
    # The bands sum back to the image.
    np.testing.assert_allclose(got[1], x.numpy(), atol=ATOL, rtol=0)


class WaitsWhileTraced(nn.Module):
    """A band split whose first forward under the plugin exporter waits until ``scored`` is set."""

    def __init__(self, inside: threading.Event, scored: threading.Event):
        super().__init__()
        self.edges, self.inside, self.scored = default_band_edges(3), inside, scored
        self.register_buffer("masks", radial_band_masks(12, 12, self.edges, "zero"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if spectral.custom_ops_enabled() and not self.inside.is_set():
            self.inside.set()
            self.scored.wait(timeout=120)
        return band_split(x, self.masks, self.edges, "zero")


def test_plugin_export_in_one_thread_leaves_another_thread_on_torch_fft(tmp_path):
    """Scoring while another thread traces in plugin mode runs the torch.fft path (masks of zeros: zero bands)."""
    inside, scored = threading.Event(), threading.Event()
    module = WaitsWhileTraced(inside, scored).eval()
    errors: list[BaseException] = []

    def export() -> None:
        try:
            export_onnx(module, tmp_path / "bands.onnx", example_input=torch.randn(2, 3, 12, 12), fft="plugin",
                        max_batch=2, progress=False)
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)
        finally:
            inside.set()

    exporter = threading.Thread(target=export)
    exporter.start()
    try:
        assert inside.wait(timeout=120) and not errors
        x = torch.randn(1, 3, 12, 12)
        bands = band_split(x, torch.zeros(4, 12, 12), module.edges, "zero")
    finally:
        scored.set()
        exporter.join()
    if errors:
        raise errors[0]
    assert torch.count_nonzero(bands) == 0
    assert [n.op_type for n in onnx.load(str(tmp_path / "bands.onnx")).graph.node if n.domain == "specdet"] == ["BandSplit"]


# --- failures leave nothing behind ---


class ExportsDifferently(nn.Module):
    """Its exported graph adds 1: validation must catch that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.fft.rfft2(x, norm="ortho").abs()
        if torch.onnx.is_in_onnx_export():
            y = y + 1.0
        return y


class CumulatesASpectrum(nn.Module):
    """Runs in PyTorch, but cumsum on a complex tensor has no lowering."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(torch.fft.fft(x), dim=-1).real


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_model_that_exports_differently_fails_validation_and_leaves_no_file(tmp_path):
    path = tmp_path / "out" / "model.onnx"
    with pytest.raises(ExportValidationError, match=r"output 'output' differs from PyTorch.*try another --fft mode"):
        export_onnx(ExportsDifferently(), path, example_input=torch.randn(2, 3, 8, 8), fft="matmul", progress=False)
    assert _leftovers(path.parent) == []  # neither model.onnx nor .model.onnx.partial


def test_zero_tolerance_fails_validation_and_keeps_an_existing_file(tmp_path):
    # FourierUnit's dft export differs from PyTorch by float32 rounding only; no tolerance at all refuses it.
    torch.manual_seed(0)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous export")
    with pytest.raises(ExportValidationError, match="above the tolerance 0 "):
        export_onnx(FourierUnit(4), path, example_input=torch.randn(2, 4, 13, 14), fft="dft", atol=0, rtol=0, progress=False)
    assert _leftovers(tmp_path) == ["model.onnx"]
    assert path.read_bytes() == b"the previous export"


def test_an_op_that_cannot_be_lowered_is_a_specdet_error_and_leaves_no_file(tmp_path):
    path = tmp_path / "model.onnx"
    with pytest.raises(SpecdetError, match=r"--fft matmul.*cumsum on a complex tensor cannot be exported"):
        export_onnx(CumulatesASpectrum(), path, example_input=torch.randn(2, 3, 8), fft="matmul", progress=False)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fft": "cufft"}, r"unknown FFT mode 'cufft'; choose one of auto, dft, matmul, plugin"),
        ({"opset": 16}, r"opset 16 is too old.*17"),
        ({"max_batch": 1}, r"batch \(2\) must be between 1 and max batch 1"),
        ({"example_input": torch.zeros(0, 4, 13, 14)}, r"batch \(0\) must be between 1"),
        ({"output_names": ["a", "b"]}, r"1 outputs but 2 output names"),
    ],
    ids=["unknown-fft", "opset-16", "batch-above-max", "empty-batch", "output-names"],
)
def test_bad_export_arguments(tmp_path, kwargs, message):
    kwargs = {"example_input": torch.zeros(2, 4, 13, 14), "progress": False, **kwargs}
    with pytest.raises(SpecdetError, match=message):
        export_onnx(FourierUnit(4), tmp_path / "model.onnx", **kwargs)
    assert _leftovers(tmp_path) == []


def test_directory_as_destination(tmp_path):
    with pytest.raises(SpecdetError, match="is a directory"):
        export_onnx(FourierUnit(4), tmp_path, example_input=torch.zeros(2, 4, 13, 14), progress=False)


def test_auto_mode_is_matmul():
    assert resolve_fft("auto") == "matmul"
    assert [resolve_fft(m) for m in ("dft", "matmul", "plugin")] == ["dft", "matmul", "plugin"]


def test_a_max_batch_of_one_exports(tmp_path):
    module = FourierUnit(channels=2).eval()
    result = export_onnx(module, tmp_path / "one.onnx", example_input=torch.randn(1, 2, 6, 8), max_batch=1, progress=False)
    assert result.max_batch == 1 and result.validation.batch_sizes == [1, 1]
