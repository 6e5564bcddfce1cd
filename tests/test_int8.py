"""``detect-export --precision int8``: QDQ ONNX, INT8 weights, FP32 islands chosen by measurement.

The tiny detectors' FP32 and INT8 exports are shared with the other tests (tiny_exports.py).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

import tiny_exports
from specdet.errors import SpecdetError
from specdet.export import artifact, cli
from specdet.export.precision import int8
from specdet.files import file_sha256
from specdet.manifest import Manifest
from specdet.runtime import Detector

CASES = [("dual_branch_tiny", "matmul"), ("rine_ssca_tiny", "plugin")]


@pytest.fixture(scope="module")
def photos():
    from specdet.images import sample_photos

    return [array for _, array in sample_photos()]


def _weight_bytes(model: onnx.ModelProto) -> dict[int, int]:
    sizes: dict[int, int] = collections.Counter()
    for init in model.graph.initializer:
        sizes[init.data_type] += len(init.raw_data)
    return sizes


@pytest.mark.parametrize("arch, fft", CASES)
def test_int8_file_is_qdq_with_int8_weights(arch, fft):
    fp32, path = tiny_exports.exported(arch, fft), tiny_exports.exported(arch, fft, "int8")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] > ops["QuantizeLinear"]  # weights have DQ only
    io = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io == [onnx.TensorProto.FLOAT] * 3
    # Every Conv outside the FP32 islands reads an INT8 weight through a DequantizeLinear.
    weights = {i.name: i for i in model.graph.initializer}
    made_by = {out: n for n in model.graph.node for out in n.output}
    islands = {n for island in Manifest.read(path).provenance["fp32_islands"] for n in island["nodes"]}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in islands]
    assert convs
    for conv in convs:
        dq = made_by[conv.input[1]]
        assert dq.op_type == "DequantizeLinear" and weights[dq.input[0]].data_type == onnx.TensorProto.INT8
    sizes = _weight_bytes(model)
    assert sizes[onnx.TensorProto.INT8] > 0
    assert sum(sizes.values()) < 0.9 * sum(_weight_bytes(onnx.load(str(fp32))).values())
    assert int8.quantized_nodes(model) == Manifest.read(path).provenance["int8"]["quantized_nodes"] > 5


@pytest.mark.parametrize("arch, fft", CASES)
def test_manifest_records_islands_trials_and_agreement(arch, fft):
    path = tiny_exports.exported(arch, fft, "int8")
    manifest = Manifest.read(path).to_dict()
    assert manifest["precision"] == "int8"
    assert manifest["parent"]["path"] == str(tiny_exports.exported(arch, fft))
    islands = {island["name"]: island for island in manifest["fp32_islands"]}
    assert islands["output head"]["forced"]
    model = onnx.load(str(path))
    by_name = {n.name: n for n in model.graph.node}
    weights = {i.name for i in model.graph.initializer}
    # An island computes in FP32 with FP32 weights (its input may come rounded from an INT8 producer before it).
    int8_weights = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    for island in islands.values():
        for name in island["nodes"]:
            assert not any(i in int8_weights for i in by_name[name].input), name
    report = manifest["int8"]
    assert report["tolerance"] == int8.DEFAULT_TOLERANCE
    assert report["agreement"]["images"] == 15 and report["agreement"]["max_prob_diff"] <= report["tolerance"]
    trials = report["trials"]
    assert trials[0]["released"] == ""
    candidates = {"spectral", "LayerNormalization", "Softmax"} & ({t["released"] for t in trials} | set(islands))
    assert [t["released"] for t in trials[1:]] == [c for c in ("spectral", "LayerNormalization", "Softmax")
                                                   if c in candidates]
    for trial in trials[1:]:  # kept exactly when within the tolerance, and then not an island
        within = trial["agreement"]["max_prob_diff"] <= report["tolerance"]
        assert trial["kept"] == within == (trial["released"] in report["released"])
        assert (trial["released"] in islands) == (not within)


@pytest.mark.parametrize("arch, fft", CASES)
def test_onnxruntime_scores_photos_within_the_recorded_agreement(arch, fft, photos):
    path = tiny_exports.exported(arch, fft, "int8")
    recorded = Manifest.read(path).provenance["int8"]["agreement"]["max_prob_diff"]
    reference = Detector(tiny_exports.exported(arch, fft)).predict(photos)
    with Detector(path, backend="onnxruntime") as detector:
        scores = detector.predict(photos)
    assert np.abs(scores - reference).max() <= recorded + 1e-5
    assert np.abs(scores - reference).max() > 0  # it does run quantised


@pytest.mark.parametrize("arch", ["dual_branch_tiny", "rine_ssca_tiny"])
def test_the_manifest_records_how_openvino_runs_the_int8_file(arch, photos):
    # OpenVINO runs QDQ with integer kernels of its own: the export measures it on the calibration photos and
    # records the figure; here OpenVINO scores the same photos through the openvino backend. With the ops after
    # ReLUs in FP32, it computes what ONNX Runtime computes from the file, within 7e-3 (those ops left it 0.097
    # apart on dual_branch_tiny).
    pytest.importorskip("openvino")
    fp32, path = tiny_exports.exported(arch, "matmul"), tiny_exports.exported(arch, "matmul", "int8")
    report = Manifest.read(path).provenance["int8"]
    [(runtime, recorded)] = report["other_runtimes"].items()
    assert runtime.startswith("openvino ")
    reference = Detector(fp32).predict(photos)
    with Detector(path, backend="openvino") as detector:
        scores = detector.predict(photos)
    assert np.abs(scores - reference).max() == pytest.approx(recorded["max_prob_diff"], abs=1e-4)
    with Detector(path, backend="onnxruntime") as detector:
        assert np.abs(scores - detector.predict(photos)).max() <= int8.DEFAULT_TOLERANCE


def test_a_plugin_file_records_that_openvino_cannot_load_it():
    pytest.importorskip("openvino")
    report = Manifest.read(tiny_exports.exported("rine_ssca_tiny", "plugin", "int8")).provenance["int8"]
    [reason] = report["other_runtimes"].values()
    assert reason.startswith("cannot load the file: ")


def test_ops_reading_a_relu_are_a_forced_fp32_island():
    # dual_branch_tiny's frequency branch: three convolutions after ReLUs, and two linear layers reading its
    # pooled ReLU output.
    path = tiny_exports.exported("dual_branch_tiny", "matmul", "int8")
    islands = {island["name"]: island for island in Manifest.read(path).provenance["fp32_islands"]}
    island = islands["after ReLU"]
    assert island["forced"] and len(island["nodes"]) == 5
    model = onnx.load(str(path))
    by_name = {n.name: n for n in model.graph.node}
    assert sorted(by_name[name].op_type for name in island["nodes"]) == ["Conv", "Conv", "Conv", "Gemm", "MatMul"]
    made_by = {out: n for n in model.graph.node for out in n.output}
    for name in island["nodes"]:  # FP32 in, not through a DequantizeLinear
        assert made_by[by_name[name].input[0]].op_type != "DequantizeLinear"


def test_a_tight_tolerance_keeps_candidates_fp32_or_fails_cleanly(tmp_path):
    source = tiny_exports.exported("dual_branch_tiny", "matmul")
    out = tmp_path / "tight.onnx"
    with pytest.raises(SpecdetError, match="misses the tolerance even with every sensitive op in FP32"):
        artifact.convert_to_int8(source, out, tolerance=1e-6, progress=False)
    assert list(tmp_path.iterdir()) == []  # no file, no partial file


def test_an_int8_file_is_not_quantised_again(tmp_path):
    path = tiny_exports.exported("rine_ssca_tiny", "plugin", "int8")
    with pytest.raises(SpecdetError, match="already int8"):
        artifact.convert_to_int8(path, tmp_path / "again.onnx", progress=False)


def _cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors (a value out of range)
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports_a_checkpoint_in_int8(tmp_path, capsys):
    out = tmp_path / "rine-int8.onnx"
    code, stdout, _ = _cli([str(tiny_exports.tiny_checkpoint("rine_ssca_tiny")), "-o", str(out), "--fft", "matmul",
                            "--max-batch", "2", "--precision", "int8", "--int8-tolerance", "0.02", "--quiet"], capsys)
    assert code == 0, stdout
    assert ", int8)" in stdout.splitlines()[0] and "INT8 conversion" in stdout.splitlines()[0]
    assert "FP32 islands:" in stdout and "decision agreement" in stdout
    manifest = Manifest.read(out).to_dict()
    assert manifest["precision"] == "int8" and manifest["batch"]["max"] == 2 and manifest["int8"]["tolerance"] == 0.02
    assert manifest["parent"]["path"].endswith("rine_ssca_tiny.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rine-int8.onnx"]  # no FP32 or partial leftovers


def test_cli_quantises_an_exported_onnx_file(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    source.write_bytes(tiny_exports.exported("dual_branch_tiny", "matmul").read_bytes())  # the manifest comes with it
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image
    from skimage import data

    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.png")
    code, stdout, _ = _cli([str(source), "--precision", "int8", "--calibration", str(photos), "--quiet"], capsys)
    assert code == 0, stdout
    assert "on 4 calibration images" in stdout
    manifest = Manifest.read(tmp_path / "m-int8.onnx").to_dict()
    assert manifest["precision"] == "int8" and manifest["int8"]["calibration"] == f"4 images from {photos}"
    assert manifest["parent"] == {"path": str(source), "sha256": file_sha256(source)}


@pytest.mark.parametrize("argv, message", [
    (["--precision", "int8", "--int8-tolerance", "0"], "--int8-tolerance"),
    (["--precision", "int8", "--int8-tolerance", "1.5"], "--int8-tolerance"),
    (["--precision", "int8", "--calibration", "/nonexistent"], "not found"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys):
    source = tmp_path / "m.onnx"
    source.write_bytes(tiny_exports.exported("rine_ssca_tiny", "matmul").read_bytes())
    code, _, stderr = _cli([str(source), *argv], capsys)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_checks_the_calibration_folder_before_exporting(tmp_path, capsys):
    checkpoint = Path(tiny_exports.tiny_checkpoint("rine_ssca_tiny"))
    code, _, stderr = _cli([str(checkpoint), "-o", str(tmp_path / "x.onnx"), "--precision", "int8",
                            "--calibration", str(tmp_path / "missing"), "--quiet"], capsys)
    assert code == 2 and "not found" in stderr and len(stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_benchmark_rows_of_an_int8_file_in_openvino_are_measured_against_the_int8_peak():
    pytest.importorskip("openvino")
    from specdet.benchmarks import loading, peaks, variants

    path = tiny_exports.exported("rine_ssca_tiny", "matmul", "int8")
    names = {"openvino-cpu": "int8", "openvino-cpu-bf16": "int8+bf16"}
    for name, expected in names.items():
        variant = variants.VARIANTS[name]
        if variant.requires():  # bf16 needs a CPU with BF16 instructions
            continue
        loaded = loading.load(variant, path, threads=1)
        try:
            assert loaded.facts["precision"] == expected and loaded.facts["artifact_precision"] == "int8"
            assert peaks.row_precision(loaded.facts["precision"]) == "int8"
        finally:
            loaded.runner.close()
