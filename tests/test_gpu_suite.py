"""The GPU suite: its dry run end to end on the CPU (what CI keeps working), the budget, failures and the headline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from specdet.benchmarks import gpu_steps, gpu_suite, kernels_bench

BENCH_SCHEMA = json.loads((Path(gpu_suite.__file__).parent / "schema.json").read_text())
SUITE_SCHEMA = json.loads(gpu_suite.SCHEMA.read_text())


def _suite(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specdet.benchmarks.gpu_suite", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path_factory.mktemp("gpu-suite")
    done = _suite("--out", str(out), "--dry-run")
    return done, json.loads((out / "gpu-suite.json").read_text()), out


def test_dry_run_runs_every_step_and_writes_a_valid_record(dry_run):
    done, record, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jsonschema.validate(record, SUITE_SCHEMA)
    statuses = {s["name"]: s["status"] for s in record["steps"]}
    assert list(statuses) == list(gpu_steps.STEPS)
    for name, status in statuses.items():
        assert status == ("skipped" if name in gpu_steps.DRY_RUN_SKIPS else "ok"), (name, record["steps"])
    assert record["dry_run"] is True and record["environment"]["versions"]["torch"]
    assert (out / "gpu-suite.md").read_text().startswith("# GPU suite (dry run")
    assert "==== kernel_tests ====" in (out / "gpu-suite.log").read_text()


def test_dry_run_steps_hold_their_figures(dry_run):
    _, record, _ = dry_run
    results = {s["name"]: s.get("result") for s in record["steps"]}
    kernels = results["kernel_tests"]
    assert kernels["emulation"] and kernels["failed"] == 0 and kernels["passed"] > 10
    bench = results["kernels_bench"]
    impls = {row["impl"] for row in bench["rows"]}
    assert {"kernel-cufft", "kernel-dft", "seed-fft-chain", "torch-rfft", "matmul-lowering"} <= impls
    assert all(row["max_abs_error"] < 1e-2 for row in bench["rows"])  # the emulated kernels agree with float64
    assert set(bench["chosen_methods"]) == {"band_split", "spectrum_magnitude_mean"}
    for model in gpu_steps.FULL_MODELS:
        scored = results[f"bench:{model}"]
        jsonschema.validate(scored["record"], BENCH_SCHEMA)  # the embedded detect-bench record is a valid one
        assert scored["model"] == gpu_steps.TINY[model] and scored["failed_attempts"] == []
        # The fast path's module (on the CPU here) has rows of its own, within the numerics contract.
        fast = f"torch-fast-fp16:{gpu_steps.TINY[model]}.pth"
        assert {row["batch"] for row in scored["record"]["latency"] if row["variant"] == fast} == {1, 2}
        (accuracy,) = [row for row in scored["record"]["accuracy"] if row["variant"] == fast]
        assert accuracy["probability_max_abs"] <= 1e-3 and accuracy["nonfinite_outputs"] == 0
        assert "| torch-fast-fp16 |" in scored["markdown"]
        trained = results[f"train:{model}"]
        assert trained["images_per_s"] > 0 and trained["steps"] == 2
    head = record["headline"]
    assert {e["op"] for e in head["kernel_speedup_vs_model_path"]} == {"band_split", "spectrum_magnitude_mean"}
    assert set(head["best_gpu_path_vs_eager_fp32"]) == set(gpu_steps.TINY.values())
    for rows in head["best_gpu_path_vs_eager_fp32"].values():
        assert all(row["probability_max_abs"] is not None for row in rows)


def test_steps_that_do_not_fit_the_budget_are_skipped(tmp_path):
    done = _suite("--out", str(tmp_path), "--dry-run", "--budget-s", "1", "--steps", "kernels_bench,tensorrt", timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "gpu-suite.json").read_text())
    jsonschema.validate(record, SUITE_SCHEMA)
    assert [s["name"] for s in record["steps"]] == ["kernels_bench", "tensorrt"]
    assert all(s["status"] == "skipped" and "of the budget left" in s["reason"] for s in record["steps"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "nope", "--dry-run"], "unknown step 'nope'"),
        (["--budget-s", "0", "--dry-run"], "give a positive number"),
        ([], "no CUDA device here"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, argv, message):
    if not argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: the suite would run")
    done = _suite("--out", str(tmp_path / "out"), *argv, timeout=120)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_child_that_hangs_is_killed_and_one_that_dies_is_reported(tmp_path):
    log = (tmp_path / "log").open("w")
    saved = tmp_path / "result.json"
    hung = gpu_suite.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                               saved, 2, log)
    assert hung["status"] == "timed_out" and hung["seconds"] < 30 and "started" in hung["output_tail"]
    died = gpu_suite.run_child([sys.executable, "-c", "import sys; sys.exit(3)"], saved, 30, log)
    assert died["status"] == "failed" and "status 3" in died["reason"]
    saved.write_text(json.dumps({"error": "RuntimeError: boom", "traceback": "Traceback ..."}))
    raised = gpu_suite.run_child([sys.executable, "-c", "pass"], saved, 30, log)
    assert raised["status"] == "failed" and raised["reason"] == "RuntimeError: boom"
    saved.write_text(json.dumps({"result": {"x": 1}}))
    done = gpu_suite.run_child([sys.executable, "-c", "pass"], saved, 30, log)
    assert done == {"status": "ok", "seconds": pytest.approx(0, abs=30), "result": {"x": 1}}


def test_failing_variants_fall_back_to_fewer_riskiest_first():
    chosen = list(gpu_steps.EAGER + gpu_steps.WITH_KERNELS + gpu_steps.GRAPHS + gpu_steps.FAST)
    selections = gpu_steps._fallbacks(chosen)
    assert selections == [chosen, list(gpu_steps.EAGER + gpu_steps.WITH_KERNELS + gpu_steps.GRAPHS),
                          list(gpu_steps.EAGER + gpu_steps.WITH_KERNELS), list(gpu_steps.EAGER)]
    assert gpu_steps._fallbacks(list(gpu_steps.EAGER)) == [list(gpu_steps.EAGER)]
    # The compiled fast path goes first; its step then still times the fast path without torch.compile.
    compiled = list(gpu_steps.FAST[:1] + gpu_steps.FAST_COMPILED)
    assert gpu_steps._fallbacks(compiled) == [compiled, list(gpu_steps.FAST[:1])]


def test_the_fast_path_is_timed_beside_the_fp16_graphs(monkeypatch):
    from specdet.benchmarks import variants

    asked = {}
    monkeypatch.setattr(gpu_steps, "model_bench", lambda ctx, model, chosen, batches: asked.setdefault(model, chosen))
    for model in gpu_steps.FULL_MODELS:
        gpu_steps.STEPS[f"bench:{model}"].run(None)
        assert {"torch-cuda-graphs-fp16", "torch-cuda-fast-fp16", "torch-cuda-fast-fp16-kernels"} <= set(asked.pop(model))
        gpu_steps.STEPS[f"compile-fast:{model}"].run(None)
        assert list(asked.pop(model)) == ["torch-cuda-fast-fp16", "torch-cuda-fast-compile-fp16"]
        assert f"compile-fast:{model}" in gpu_steps.DRY_RUN_SKIPS  # minutes of autotuning: not on a CPU
    for name in gpu_steps.FAST + gpu_steps.FAST_COMPILED + gpu_steps.DRY_RUN_VARIANTS:
        assert name in variants.VARIANTS
    assert variants.VARIANTS["torch-fast-fp16"].device == "cpu" and "torch-fast-fp16" in gpu_steps.DRY_RUN_VARIANTS


def _row(op, impl, ms, dtype="float16", shape=(32, 3, 224, 224)):
    return {"op": op, "impl": impl, "dtype": dtype, "shape": list(shape), "median_ms": ms}


def test_kernel_summary_speedups_and_method_choice():
    rows = [
        _row("band_split", "kernel-cufft", 2.0), _row("band_split", "kernel-dft", 1.0),
        _row("band_split", "seed-fft-chain", 6.0), _row("band_split", "torch-rfft", 3.0),
        _row("band_split", "kernel-cufft", 1.0, shape=(1, 3, 224, 224)), _row("band_split", "kernel-dft", 1.5, shape=(1, 3, 224, 224)),
        _row("spectrum_magnitude_mean", "kernel-cufft", 0.5, shape=(32, 128, 16, 16)),
        _row("spectrum_magnitude_mean", "kernel-dft", 0.25, shape=(32, 128, 16, 16)),
        _row("spectrum_magnitude_mean", "torch-rfft", 1.0, shape=(32, 128, 16, 16)),
        {"op": "band_split", "impl": "kernel-dft", "dtype": "float32", "shape": [32, 3, 224, 224], "error": "boom"},
    ]
    # dft wins band_split over both shapes (1.0 + 1.5 < 2.0 + 1.0) and the statistic
    assert kernels_bench.choose_methods(rows) == {"band_split": "dft", "spectrum_magnitude_mean": "dft"}
    summary = kernels_bench.summarize(rows)
    dft32 = next(e for e in summary if e["method"] == "dft" and e["op"] == "band_split" and e["shape"][0] == 32)
    assert dft32["speedup_vs_seed-fft-chain"] == 6.0 and dft32["speedup_vs_torch-rfft"] == 3.0
    head = gpu_suite.headline([{"name": "kernels_bench", "status": "ok", "result": {"summary": summary, "chosen_methods": {}}}])
    best = {(e["op"], e["shape"][0]): e for e in head["kernel_speedup_vs_model_path"]}
    # The headline's baseline is the models' own torch.fft path, not the seed's chain (shown beside it)
    band = best[("band_split", 32)]
    assert band["method"] == "dft" and band["baseline"] == "torch-rfft" and band["speedup"] == 3.0
    assert band["speedup_vs_seed_chain"] == 6.0
    assert band["model_runs_it"] is False  # the models feed the band split FP32 images: an FP16 row is not what runs
    assert best[("spectrum_magnitude_mean", 32)] | {"baseline": "torch-rfft", "speedup": 4.0} == best[("spectrum_magnitude_mean", 32)]
    assert best[("spectrum_magnitude_mean", 32)]["model_runs_it"] is True


def test_best_gpu_path_is_measured_against_eager_fp32():
    latency = [{"variant": "torch-cuda-fp32:m.pth", "batch": 32, "median_ms": 100.0},
               {"variant": "torch-cuda-fp32-tf32:m.pth", "batch": 32, "median_ms": 50.0},
               {"variant": "torch-cuda-graphs-fp16:m.pth", "batch": 32, "median_ms": 12.5, "timed": "device",
                "peak_precision": "gpu_fp16_tensor", "fraction_of_peak": 0.25},
               {"variant": "torch-cuda-autocast-fp16:m.pth", "batch": 32, "median_ms": 20.0}]
    accuracy = [{"variant": "torch-cuda-graphs-fp16:m.pth", "probability_max_abs": 4e-4},
                {"variant": "torch-cuda-fp32:m.pth", "probability_max_abs": 1e-7}]
    steps = [{"name": "bench:m", "status": "ok", "result": {"model": "m", "record": {"latency": latency,
                                                                                    "accuracy": accuracy}}}]
    (best,) = gpu_suite.headline(steps)["best_gpu_path_vs_eager_fp32"]["m"]
    assert best == {"batch": 32, "variant": "torch-cuda-graphs-fp16:m.pth", "median_ms": 12.5,
                    "baseline": "torch-cuda-fp32:m.pth", "speedup": 8.0, "speedup_vs_tf32": 4.0,
                    "fraction_of_fp16_tensor_peak": 0.25, "probability_max_abs": 4e-4, "timed": "device"}
    assert "| 4.0e-04 |" in gpu_suite.markdown({"dry_run": False, "date": "d", "seconds": 1, "budget_s": 2,
                                                "command": "c", "environment": {"torch": "t", "torch_cuda": None,
                                                                                "nvcc": None, "versions": {}},
                                                "steps": [], "headline": gpu_suite.headline(steps)})
