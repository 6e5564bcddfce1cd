"""``detect-export --precision fp16``: mixed-precision ONNX with FP32 I/O and measured FP32 islands.

The tiny detectors' exports are shared with test_engine.py (tiny_exports.py).
Small hand-made modules cover what the detectors do not: overflow (range
islands) and ONNX DFT nodes (forced FP32).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import tiny_exports
from specdet.errors import SpecdetError
from specdet.export import artifact, cli, dft_matrices
from specdet.export.onnx import export_onnx
from specdet.export.precision.fp16 import DEFAULT_TOLERANCE, to_fp16
from specdet.export.precision.fp16_convert import convert_to_fp16
from specdet.export.precision.islands import find_groups, output_head
from specdet.export.precision.measure import run_model, storage_twin
from specdet.export.precision.spectral import is_dft_matrix
from specdet.manifest import Manifest
from specdet.runtime import Detector

THUMBS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cnndetection-thumbs"


def _float_weight_bytes(model: onnx.ModelProto) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            sizes[init.data_type] = sizes.get(init.data_type, 0) + len(init.raw_data)
    return sizes


@pytest.fixture(scope="module")
def photos():
    from specdet.images import sample_photos

    return [array for _, array in sample_photos()]


@pytest.mark.parametrize("arch, fft", [("dual_branch_tiny", "matmul"), ("rine_ssca_tiny", "plugin")])
def test_fp16_file_has_fp32_io_and_fp16_weights(arch, fft):
    fp32, fp16 = tiny_exports.exported(arch, fft), tiny_exports.exported(arch, fft, "fp16")
    model = onnx.load(str(fp16))
    onnx.checker.check_model(model, full_check=True)
    io = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io == [onnx.TensorProto.FLOAT] * 3
    sizes = _float_weight_bytes(model)
    # Everything but the FP32 islands' weights (the classifier layer, plugin fallback bodies) is FP16.
    assert sizes[onnx.TensorProto.FLOAT16] > 10 * sizes.get(onnx.TensorProto.FLOAT, 0)
    before = _float_weight_bytes(onnx.load(str(fp32)))[onnx.TensorProto.FLOAT]
    assert 0.45 < sum(sizes.values()) / before < 0.6


@pytest.mark.parametrize("arch, fft", [("dual_branch_tiny", "matmul"), ("rine_ssca_tiny", "plugin")])
def test_manifest_records_islands_and_measured_error(arch, fft):
    fp16 = tiny_exports.exported(arch, fft, "fp16")
    manifest = Manifest.read(fp16).to_dict()
    parent = Manifest.read(tiny_exports.exported(arch, fft)).to_dict()
    assert manifest["precision"] == "fp16"
    assert manifest["inputs"] == parent["inputs"] and manifest["outputs"] == parent["outputs"]
    assert manifest["parent"]["path"] == str(tiny_exports.exported(arch, fft))
    islands = {island["name"]: island for island in manifest["fp32_islands"]}
    assert "output head" in islands and islands["output head"]["forced"]
    if fft == "plugin":
        assert islands["plugin ops"]["nodes"] and islands["plugin ops"]["forced"]
    names = {n.name for n in onnx.load(str(fp16)).graph.node}
    assert all(node in names for island in islands.values() for node in island["nodes"])
    report = manifest["fp16"]
    assert report["converter"].startswith("onnxconverter-common")
    assert report["agreement"]["max_prob_diff"] <= report["tolerance"]
    assert report["agreement"]["decision_agreement"] == 1.0
    # The baseline and one trial per candidate group, each with its numbers.
    assert report["trials"][0]["released"] == "" and len(report["trials"]) >= 3
    assert set(report["released"]) <= {t["released"] for t in report["trials"]}
    assert "spectral" in report["released"] + list(islands) or fft == "plugin"


@pytest.mark.parametrize("arch, fft", [("dual_branch_tiny", "matmul"), ("rine_ssca_tiny", "plugin")])
def test_fp16_scores_photos_like_fp32(arch, fft, photos):
    fp32 = Detector(tiny_exports.exported(arch, fft)).predict(photos)
    fp16 = Detector(tiny_exports.exported(arch, fft, "fp16")).predict(photos)  # onnxruntime, below ORT_ENABLE_ALL
    assert np.abs(fp16 - fp32).max() <= DEFAULT_TOLERANCE


@pytest.mark.skipif(not THUMBS.is_dir(), reason=f"real photos not found at {THUMBS}")
def test_fp16_agrees_with_fp32_on_cnndetection_thumbs():
    from specdet.benchmarks.fp16_agreement import compare

    result = compare(str(tiny_exports.exported("dual_branch_tiny", "matmul")),
                     str(tiny_exports.exported("dual_branch_tiny", "matmul", "fp16")), str(THUMBS), limit=80)
    assert result["images"] == 80
    assert result["decision_agreement"] >= 0.995
    assert result["max_prob_diff"] <= 0.01


def test_spectral_region_of_the_matmul_lowering():
    model = onnx.load(str(tiny_exports.exported("dual_branch_tiny", "matmul")))
    groups = {g.name: g for g in find_groups(model)}
    spectral = groups["spectral"]
    assert not spectral.forced
    by_name = {n.name: n for n in model.graph.node}
    # rfft2 and irfft2 of the band split: 2 axes x (cos, sin) products each way, plus the masking in between.
    assert sum(by_name[n].op_type == "MatMul" for n in spectral.nodes) >= 8
    assert any(by_name[n].op_type == "Mul" for n in spectral.nodes)
    assert not any(by_name[n].op_type in ("Conv", "LayerNormalization") for n in spectral.nodes)
    # The DFT matrices those products read are float32 weights, as the converter expects, not float64 casts.
    weights = {i.name: i for i in model.graph.initializer}
    matrices = {i for n in spectral.nodes if by_name[n].op_type == "MatMul" for i in by_name[n].input if i in weights}
    assert len(matrices) >= 8 and all(weights[i].data_type == onnx.TensorProto.FLOAT for i in matrices)


def test_dft_matrices_are_recognised():
    like = torch.zeros(1)
    for n in (16, 224, 17):
        for matrix in (*dft_matrices.r2c_matrices(n, "ortho", like), *dft_matrices.c2r_matrices(n, "ortho", like),
                       *dft_matrices.c2c_matrices(n, False, None, like)):
            assert is_dft_matrix(matrix.numpy())
            assert is_dft_matrix(matrix.numpy().T)
    rng = np.random.default_rng(0)
    assert not is_dft_matrix(rng.standard_normal((64, 64)).astype(np.float32))
    assert not is_dft_matrix(np.eye(32, dtype=np.float32) + 0.5)


class _Scored(torch.nn.Module):
    """image -> (logit, probability) around a feature function, like the detectors' scoring module."""

    def __init__(self, features, width: int):
        super().__init__()
        torch.manual_seed(0)
        self.features, self.head = features, torch.nn.Linear(width, 1)

    def forward(self, x):
        logit = self.head(self.features(x)).squeeze(1)
        return logit, torch.sigmoid(logit)


class _Loud(torch.nn.Module):
    """Squares of activations in the thousands: beyond FP16's 65,504 unless kept FP32."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        h = self.conv(x) * 3000.0
        return (h * h).mean((2, 3)) / 1e8


class _Spectrum(torch.nn.Module):
    def forward(self, x):
        return torch.fft.rfft2(x, norm="ortho").abs().mean((-2, -1))


def _export(module, path: Path, fft: str = "matmul") -> onnx.ModelProto:
    export_onnx(module, path, example_input=torch.randn(2, 3, 16, 16), fft=fft, max_batch=4, input_name="image",
                output_names=["logit", "probability"], progress=False)
    return onnx.load(str(path))


def _batches():
    return [np.random.default_rng(i).standard_normal((4, 3, 16, 16)).astype(np.float32) for i in range(2)]


def test_overflow_becomes_a_range_island(tmp_path):
    model = _export(_Scored(_Loud(), 4), tmp_path / "loud.onnx")
    batches = _batches()
    # Everything in FP16: the squares overflow.
    naive = convert_to_fp16(model, [])
    out = run_model(storage_twin(naive), batches, "image", fp16=True, unoptimised=True)
    assert not np.all(np.isfinite(out["logit"]))
    converted, report = to_fp16(model, batches, input_name="image", threshold=0.5, calibration="noise")
    islands = {g.name: g for g in report.islands}
    assert islands["range"].forced and islands["range"].nodes
    assert report.agreement.finite and report.agreement.max_prob_diff <= DEFAULT_TOLERANCE
    reference = run_model(model.SerializeToString(), batches, "image", fp16=False)
    result = run_model(converted.SerializeToString(), batches, "image", fp16=True)
    assert np.abs(result["probability"] - reference["probability"]).max() <= DEFAULT_TOLERANCE


def test_storage_twin_leaves_the_model_unchanged_also_when_it_fails(tmp_path, monkeypatch):
    converted = convert_to_fp16(_export(_Scored(_Spectrum(), 3), tmp_path / "twin.onnx"), [])
    before = converted.SerializeToString()
    twin = onnx.load_from_string(storage_twin(converted))
    assert converted.SerializeToString() == before
    assert sum(n.name.endswith("__round") for n in twin.graph.node) > 2  # the twin has its rounding nodes
    make_node, calls = onnx.helper.make_node, []

    def fails_on_the_third_call(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:  # some outputs renamed and nodes made by then, none added yet
            raise RuntimeError("injected")
        return make_node(*args, **kwargs)

    monkeypatch.setattr(onnx.helper, "make_node", fails_on_the_third_call)
    with pytest.raises(RuntimeError, match="injected"):
        storage_twin(converted)
    assert converted.SerializeToString() == before


def test_dft_nodes_stay_fp32(tmp_path):
    model = _export(_Scored(_Spectrum(), 3), tmp_path / "dft.onnx", fft="dft")
    assert any(n.op_type == "DFT" for n in model.graph.node)
    converted, report = to_fp16(model, _batches(), input_name="image", threshold=0.5, calibration="noise")
    dft = next(g for g in report.islands if g.name == "spectral (DFT)")
    assert dft.forced
    types = {v.name: v.type.tensor_type.elem_type for v in converted.graph.value_info}
    for node in converted.graph.node:
        if node.op_type == "DFT":
            assert types.get(node.output[0]) == onnx.TensorProto.FLOAT


def test_matmul_spectrum_is_a_measured_candidate(tmp_path):
    model = _export(_Scored(_Spectrum(), 3), tmp_path / "mm.onnx")
    _, report = to_fp16(model, _batches(), input_name="image", threshold=0.5, calibration="noise")
    trial = next(t for t in report.trials if t.released == "spectral")
    assert trial.agreement.images == 8
    assert ("spectral" in report.released) == trial.kept


def test_fp32_islands_keep_fp32_weights(tmp_path):
    model = _export(_Scored(_Spectrum(), 3), tmp_path / "w.onnx")
    head = output_head(model.graph)
    converted = convert_to_fp16(model, head)
    weights = {i.name: i for i in converted.graph.initializer}
    gemm = next(n for n in converted.graph.node if n.name in head and n.op_type in ("Gemm", "MatMul"))
    for name in gemm.input:
        if name in weights:
            assert weights[name].data_type == onnx.TensorProto.FLOAT
            original = next(i for i in model.graph.initializer if i.name == name.removesuffix("__fp32"))
            np.testing.assert_array_equal(numpy_helper.to_array(weights[name]), numpy_helper.to_array(original))


def test_an_fp16_file_is_not_converted_again(tmp_path):
    fp16 = tiny_exports.exported("rine_ssca_tiny", "plugin", "fp16")
    with pytest.raises(SpecdetError, match="already fp16"):
        artifact.convert_to_fp16(fp16, tmp_path / "again.onnx", progress=False)


def _cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports_a_checkpoint_in_fp16(tmp_path, capsys):
    out = tmp_path / "rine-fp16.onnx"
    code, stdout, _ = _cli([str(tiny_exports.tiny_checkpoint("rine_ssca_tiny")), "-o", str(out), "--fft", "matmul",
                            "--max-batch", "2", "--precision", "fp16", "--quiet"], capsys)
    assert code == 0, stdout
    assert "fp16" in stdout and "stay FP32" in stdout and "decision agreement" in stdout
    manifest = Manifest.read(out).to_dict()
    # The time printed is the whole job: the FP32 export and the conversion (its longest step), each given too.
    timing = re.search(r" in ([\d.]+) s \(FP32 export ([\d.]+) s, FP16 conversion ([\d.]+) s\)$", stdout.splitlines()[0])
    assert timing, stdout.splitlines()[0]
    total, export, conversion = map(float, timing.groups())
    assert abs(total - export - conversion) <= 0.15  # each rounded to 0.1 s
    assert conversion >= manifest["fp16"]["seconds"] - 0.05 and export > 0
    assert manifest["precision"] == "fp16" and manifest["batch"]["max"] == 2
    assert manifest["parent"]["path"].endswith("rine_ssca_tiny.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rine-fp16.onnx"]  # no FP32 leftovers, manifest inside


def test_cli_converts_an_exported_onnx_file(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    fp32 = tiny_exports.exported("rine_ssca_tiny", "matmul")
    source.write_bytes(fp32.read_bytes())  # the manifest comes with it
    code, stdout, _ = _cli([str(source), "--precision", "fp16", "--calibration", str(tmp_path), "--quiet"], capsys)
    assert code == 2  # the folder has no images
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image
    from skimage import data

    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.png")
    code, stdout, _ = _cli([str(source), "--precision", "fp16", "--calibration", str(photos), "--quiet"], capsys)
    assert code == 0
    assert "3 calibration images" in stdout
    manifest = Manifest.read(tmp_path / "m-fp16.onnx").to_dict()
    assert manifest["precision"] == "fp16"
    seconds = float(re.search(r"\(.*fp16\) in ([\d.]+) s$", stdout.splitlines()[0]).group(1))
    assert seconds >= manifest["fp16"]["seconds"] - 0.05  # the conversion with its checks and writing


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp32"], "already ONNX"),
    (["--precision", "fp16", "--calibration", "/nonexistent"], "not found"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    code, _, stderr = _cli([str(tiny_exports.exported("rine_ssca_tiny", "matmul")), *argv], capsys)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
