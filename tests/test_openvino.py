"""The ``openvino`` backend: scores as onnxruntime does, its options, its life cycle, its one-line errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import tiny_exports
from specdet.errors import SpecdetError
from specdet.runtime import Detector, create_runner
from specdet.runtime.cli import main

GOOD = 9  # images under image_dir/good


@pytest.fixture
def ov():
    return pytest.importorskip("openvino")


def _batch(runner, count: int, seed: int = 0) -> np.ndarray:
    shape = runner.input_spec().shape[1:]
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(runner.input_spec().dtype)


@pytest.mark.parametrize("arch", ["dual_branch_tiny", "rine_ssca_tiny"])
def test_f32_scores_as_onnxruntime_at_every_batch_size(ov, arch):
    path = tiny_exports.exported(arch, "matmul")
    with create_runner(path, "onnxruntime") as reference, create_runner(path, "openvino") as runner:
        assert runner.inference_precision == "f32"
        for count in (1, 3, tiny_exports.MAX_BATCH):  # one compiled model, dynamic batch
            batch = _batch(runner, count, seed=count)
            want, got = reference.infer(batch), runner.infer(batch)
            assert got["probability"].shape == (count,) and got["probability"].dtype == np.float32
            np.testing.assert_allclose(got["probability"], want["probability"], rtol=0, atol=1e-5)
            np.testing.assert_allclose(got["logit"], want["logit"], rtol=0, atol=1e-4)


def test_bf16_runs_where_the_cpu_has_it_and_is_refused_where_it_does_not(ov):
    path = tiny_exports.exported("dual_branch_tiny", "matmul")
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(SpecdetError, match="no BF16 instructions .*--inference-precision f32"):
            create_runner(path, "openvino", inference_precision="bf16")
        return
    with create_runner(path, "onnxruntime") as reference, create_runner(path, "openvino", inference_precision="bf16") as runner:
        assert runner.inference_precision == "bf16"
        batch = _batch(runner, 2)
        difference = np.abs(runner.infer(batch)["probability"] - reference.infer(batch)["probability"]).max()
        assert 0 < difference < 0.01  # computed in BF16 (not f32 under another name), still close


def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(ov, monkeypatch):
    class CoreWithoutBf16(ov.Core):
        def get_property(self, device, name):
            if name == "OPTIMIZATION_CAPABILITIES":
                return ["FP32", "INT8"]
            return super().get_property(device, name)

    monkeypatch.setattr(ov, "Core", CoreWithoutBf16)
    with pytest.raises(SpecdetError) as err:
        create_runner(tiny_exports.exported("dual_branch_tiny", "matmul"), "openvino", inference_precision="bf16")
    assert "avx512_bf16 or amx_bf16" in str(err.value) and "\n" not in str(err.value)


def test_threads_are_applied_and_read_back(ov, tiny_onnx):
    with create_runner(tiny_onnx, "openvino", threads=1) as runner:
        assert runner.threads == 1
        assert runner.compiled_model.get_property("INFERENCE_NUM_THREADS") == 1


def test_close_frees_the_model_twice_safely_and_refuses_to_run(ov, tiny_onnx):
    runner = create_runner(tiny_onnx, "openvino")
    batch = _batch(runner, 1)
    runner.infer(batch)
    runner.close()
    runner.close()
    assert runner.closed and not hasattr(runner, "_compiled")
    for use in (lambda: runner.infer(batch), lambda: runner.compiled_model, lambda: runner.inference_precision):
        with pytest.raises(SpecdetError, match="openvino runner of tiny.onnx is closed"):
            use()


@pytest.mark.parametrize(
    "backend, options, message",
    [
        ("openvino", {"inference_precision": "fp16"}, "no inference precision 'fp16': choose f32 or bf16"),
        ("openvino", {"providers": ["CPUExecutionProvider"]}, "openvino backend has no option providers (it takes inference_precision)"),
        ("onnxruntime", {"inference_precision": "bf16"}, "onnxruntime backend has no option inference_precision (it takes providers)"),
    ],
)
def test_bad_options_are_one_line_errors(ov, tiny_onnx, backend, options, message):
    for make in (create_runner, Detector):
        with pytest.raises(SpecdetError) as err:
            make(tiny_onnx, backend, **options)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_a_file_openvino_cannot_convert_says_to_export_matmul_ffts(ov):
    with pytest.raises(SpecdetError) as err:
        create_runner(tiny_exports.exported("dual_branch_tiny", "dft"), "openvino")
    assert "OpenVINO cannot load" in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).endswith("re-export it with detect-export --fft matmul")


def test_without_openvino_the_error_names_the_extra(tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(SpecdetError) as err:
        create_runner(tiny_onnx, "openvino")
    assert "pip install 'specdet[openvino]'" in str(err.value) and "\n" not in str(err.value)


def test_detect_predict_on_openvino_prints_what_onnxruntime_prints(ov, tiny_onnx, image_dir, capsys):
    outputs = []
    for backend in ("onnxruntime", "openvino"):
        assert main([str(tiny_onnx), str(image_dir / "good"), "--csv", "--backend", backend, "--batch-size", "3"]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        outputs.append(out)
    assert outputs[0] == outputs[1] and len(outputs[1].splitlines()) == 1 + GOOD


def test_detect_predict_refuses_inference_precision_on_another_backend(tiny_onnx, image_dir, capsys):
    args = [str(tiny_onnx), str(image_dir / "good"), "--backend", "onnxruntime", "--inference-precision", "bf16"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "onnxruntime backend has no option inference_precision" in err and len(err.splitlines()) == 1


def test_detect_bench_runs_the_openvino_variants_and_records_what_ran(ov, tiny_checkpoint, tiny_onnx, tmp_path, capsys):
    import json

    import jsonschema

    from specdet.benchmarks import cli as bench_cli
    from specdet.benchmarks import report, variants

    bf16 = variants.VARIANTS["openvino-cpu-bf16"].requires() is None
    assert bf16 == ("BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    argv = [tiny_checkpoint, tiny_onnx, "--backends", "torch-fp32,openvino", "--batch-sizes", "1,2", "--threads", "1",
            "--out", tmp_path, "--no-plots", "--warmup", "1", "--iters", "2", "--quiet"]
    assert bench_cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    (json_path,) = tmp_path.glob("*.json")
    record = json.loads(json_path.read_text())
    jsonschema.validate(record, report.schema())
    facts = {v["variant"]: v for v in record["variants"]}
    expected = {"openvino-cpu": "fp32", **({"openvino-cpu-bf16": "bf16"} if bf16 else {})}
    assert {name: facts[name]["precision"] for name in expected} == expected
    assert all(facts[name]["threads"] == 1 and facts[name]["library"]["openvino"] for name in expected)
    assert {(r["variant"], r["batch"]) for r in record["latency"]} >= {
        (f"{name}:tiny.onnx", batch) for name in expected for batch in (1, 2)}
    # Each row against the peak of its own precision.
    for row in record["latency"]:
        name = row["variant"].split(":")[0]
        assert row["peak_precision"] == {"torch-fp32": "fp32", "openvino-cpu": "fp32", "openvino-cpu-bf16": "bf16"}[name]
        peak = record["cpu_peak"]["per_precision"][row["peak_precision"]]["ops_per_s"]
        assert row["fraction_of_peak"] == pytest.approx(record["model"]["flops_per_image"] * row["images_per_s"] / peak)
    accuracy = {r["variant"]: r for r in record["accuracy"]}
    assert accuracy["openvino-cpu:tiny.onnx"]["probability_max_abs"] < 1e-5
