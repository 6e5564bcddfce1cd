"""The steps of the GPU suite (:mod:`specdet.benchmarks.gpu_suite`), each a function of a :class:`Context`.

A step runs in a child process of the suite (a CUDA error or a hang in one
step cannot take the others down) and returns a JSON-ready dict. With
``dry_run`` every step runs on the CPU at tiny sizes with CPU fallbacks
(the emulation library for the kernels, the tiny detectors, two timed
rounds): it checks the plumbing, in CI, and measures nothing worth keeping.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent  # a source checkout: tests/ lives here
FULL_MODELS = ("dual_branch_vit_b16", "rine_ssca_clip_l14")
TINY = {"dual_branch_vit_b16": "dual_branch_tiny", "rine_ssca_clip_l14": "rine_ssca_tiny"}
# The spectral op each family calls: the kernel method the benchmark chose for it is used for that model.
MODEL_OP = {"dual_branch": "band_split", "rine_ssca": "spectrum_magnitude_mean"}
# Batch 128 only for the dual-branch model: the CLIP L/14 one's FP32 rows alone would take a minute there.
BENCH_BATCHES = {"dual_branch_vit_b16": (1, 8, 32, 128), "rine_ssca_clip_l14": (1, 8, 32)}
# GPU rows: 3 blocks of 50 back-to-back calls on a batch already on the device (timing.py), after 2 single calls.
DEVICE_PLAN = {"warmup": 2, "iters": 3, "device_calls": 50}
# The eager variants first (both FP32 baselines: strict, and TF32 tensor cores); the CUDA-graph and kernel
# variants are dropped and the run repeated when they fail.
EAGER = ("torch-cuda-fp32", "torch-cuda-fp32-tf32", "torch-cuda-autocast-fp16", "torch-cuda-autocast-bf16")
WITH_KERNELS = ("torch-cuda-kernels", "torch-cuda-autocast-fp16-kernels")
GRAPHS = ("torch-cuda-graphs-fp16", "torch-cuda-graphs-fp16-kernels")
# The fast path (fast_graph.py), timed beside the CUDA-graph FP16 rows it should beat; the first to be dropped.
FAST = ("torch-cuda-fast-fp16", "torch-cuda-fast-fp16-kernels")
COMPILED = ("torch-cuda-compile-fp16", "torch-cuda-compile-fp16-kernels")
# The fast path with torch.compile's max-autotune inside our graphs: minutes of autotuning, a step of its own.
FAST_COMPILED = ("torch-cuda-fast-compile-fp16",)
# Dropped in this order when a selection of variants fails, before the kernel variants (EAGER stays).
RISKIEST_FIRST = (FAST_COMPILED, FAST, GRAPHS)
# The dry run's variants: the CPU reference, autocast, and the fast path's module on the CPU (its numerics).
DRY_RUN_VARIANTS = ("torch-fp32", "torch-autocast-bf16", "torch-fast-fp16")


@dataclasses.dataclass(frozen=True)
class Context:
    dry_run: bool
    work: Path  # the suite's scratch folder: each step's JSON, checkpoints

    def previous(self, step: str) -> dict[str, Any] | None:
        """The result of an earlier step of this run, or None if it did not run or failed."""
        path = self.work / f"{step.replace(':', '_')}.json"
        if not path.is_file():
            return None
        return json.loads(path.read_text()).get("result")

    def model(self, name: str) -> str:
        return TINY[name] if self.dry_run else name

    def checkpoint(self, name: str) -> Path:
        """A random-weight checkpoint of ``name`` (fixed seed), saved once per run."""
        import torch

        from specdet.models import checkpoint, create_model

        path = self.work / f"{name}.pth"
        if not path.is_file():
            torch.manual_seed(0)
            checkpoint.save(create_model(name), path, source="gpu_suite (random init, seed 0)")
        return path


# ---- 1. the kernel library and its contract tests ------------------------------------------------


def kernel_tests(ctx: Context) -> dict[str, Any]:
    """Build the kernel library for this GPU (or the CPU emulation) and run the contract tests against it."""
    from specdet.kernels import library

    started = time.perf_counter()
    if ctx.dry_run:
        lib = library.load_emulation()
        tests, selection = REPO / "tests" / "test_kernels_build.py", ["-k", "emulated"]
    else:
        import torch

        major, minor = torch.cuda.get_device_capability()
        lib = library.load(archs=f"{major}{minor}")
        tests, selection = REPO / "tests" / "test_kernels_gpu.py", []
    build_s = time.perf_counter() - started
    result: dict[str, Any] = {"library": str(lib.path), "emulation": lib.is_emulation, "build_s": round(build_s, 1)}
    if not tests.is_file():
        raise FileNotFoundError(f"{tests} not found: run the suite from a source checkout (tests/ beside the package)")
    junit = ctx.work / "kernel_tests.xml"
    env = {**os.environ, "SPECDET_KERNELS_LIB": "" if ctx.dry_run else str(lib.path)}
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", f"--junitxml={junit}", str(tests), *selection]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=env, stdout=sys.stdout, stderr=subprocess.STDOUT, check=False)
    result.update(pytest_exit=completed.returncode, test_s=round(time.perf_counter() - started, 1), **_junit(junit))
    return result


def _junit(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "failures": ["pytest wrote no report"]}
    suite = ElementTree.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    failures = []
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            failures.append(f"{case.get('name')}: {message[0][:300] if message else ''}")
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return {"tests": total, "passed": total - skipped - failed, "failed": failed, "skipped": skipped, "failures": failures}


# ---- 2. the kernel micro-benchmark ---------------------------------------------------------------


def kernels_bench(ctx: Context) -> dict[str, Any]:
    """Band split and spectrum statistic: our kernels (both methods) against the seed's chain and the lowerings."""
    from specdet.benchmarks import kernels_bench as bench

    if ctx.dry_run:
        argv = ["--device", "cpu", "--batches", "1", "--size", "32", "--ssca-channels", "8", "--ssca-size", "8",
                "--models", "", "--blocks", "2", "--calls", "2", "--warmup", "1", "--rotate-mib", "0.03"]
    else:
        argv = ["--batches", "1,8,32", "--models", "", "--blocks", "5", "--calls", "50", "--warmup", "10"]
    report = bench.run(bench.parse_args(argv))
    report["argv"] = argv
    return report


# ---- 3. the detectors with detect-bench's GPU variants -------------------------------------------


def model_bench(ctx: Context, name: str, variant_names: tuple[str, ...], batches: tuple[int, ...]) -> dict[str, Any]:
    """detect-bench on a random-weight checkpoint; kernel variants only where step 1 built the library."""
    from specdet.benchmarks import bench, report, timing

    model = ctx.model(name)
    if ctx.dry_run:
        chosen, batches, plan, max_images = list(DRY_RUN_VARIANTS), (1, 2), timing.Plan(1, 2, device_calls=2), 4
    else:
        chosen, plan, max_images = list(variant_names), timing.Plan(**DEVICE_PLAN), None
        built = ctx.previous("kernel_tests")
        if not built or built.get("emulation") or not built.get("library"):
            chosen = [v for v in chosen if not v.endswith("-kernels")]
        else:
            os.environ["SPECDET_KERNELS_LIB"] = built["library"]
        methods = (ctx.previous("kernels_bench") or {}).get("chosen_methods", {})
        op = next(op for family, op in MODEL_OP.items() if model.startswith(family))
        if op in methods:
            os.environ["SPECDET_KERNELS_METHOD"] = methods[op]
    checkpoint = ctx.checkpoint(model)
    attempts = []
    for selection in _fallbacks(chosen):
        config = bench.Config(artifacts=[checkpoint], backends=",".join(selection), batch_sizes=tuple(batches),
                              max_images=max_images, plan=plan, command=f"gpu_suite: {model} {','.join(selection)}")
        try:
            record = bench.run(config)
            break
        except Exception as error:  # noqa: BLE001 (a failing extra variant must not cost the eager figures)
            attempts.append({"variants": selection, "error": f"{type(error).__name__}: {error}"[:1000]})
            print(f"gpu_suite: {model} failed with {', '.join(selection)}: {attempts[-1]['error']}", flush=True)
    else:
        raise RuntimeError(f"every selection of variants failed; the last: {attempts[-1]['error']}")
    return {"model": model, "kernels_method": os.environ.get("SPECDET_KERNELS_METHOD", "auto"),
            "failed_attempts": attempts, "markdown": report.markdown(record), "record": record}


def _fallbacks(chosen: list[str]) -> list[list[str]]:
    """``chosen``, then without each group of :data:`RISKIEST_FIRST` in turn, then without our kernels too."""
    selections, left = [chosen], chosen
    for group in RISKIEST_FIRST:
        left = [v for v in left if v not in group]
        selections.append(left)
    selections.append([v for v in chosen if v in EAGER])
    unique = []
    for selection in selections:
        if selection and selection not in unique:
            unique.append(selection)
    return unique


# ---- 4. training steps ---------------------------------------------------------------------------


def train_steps(ctx: Context, name: str, compile: bool) -> dict[str, Any]:
    """Images per second of the training step as ``detect-train`` runs it (its recipe, autocast, channels-last).

    Random images and labels already on the device: the data loader is not
    part of the figure.
    """
    import torch

    from specdet.models import create_model, model_config
    from specdet.train.config import recipe_for
    from specdet.train.loop import autocast_dtype

    model_name = ctx.model(name)
    device = torch.device("cpu" if ctx.dry_run else "cuda")
    torch.manual_seed(0)
    model = create_model(model_name).train()
    recipe = recipe_for(model)
    batch = 2 if ctx.dry_run else recipe.batch_size
    warmup, steps = (1, 2) if ctx.dry_run else (3, 10)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = recipe.optimizer(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    loss_fn = recipe.loss().to(device)
    amp = autocast_dtype("auto", device)
    net = torch.compile(model) if compile else model
    size = model_config(model_name).input_size
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.arange(batch, device=device) % 2

    def step() -> float:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            outputs = net(x)
        total, _ = loss_fn({k: v.float() for k, v in outputs.items()}, y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        optimizer.step()
        return total

    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    synchronize()
    first_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize()
    seconds = time.perf_counter() - started
    return {
        "model": model_name, "device": str(device), "batch": batch, "autocast": str(amp).replace("torch.", "") if amp else None,
        "channels_last": memory_format == torch.channels_last, "compile": compile, "warmup_steps": warmup,
        "warmup_s": round(first_s, 2), "steps": steps, "seconds": round(seconds, 3),
        "images_per_s": batch * steps / seconds, "final_loss": float(loss.detach()),
        "trainable_parameters": sum(p.numel() for p in params),
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


# ---- 5. TensorRT / TensorRT-RTX engines ----------------------------------------------------------


def tensorrt_engines(ctx: Context) -> dict[str, Any]:
    """Where tensorrt or tensorrt_rtx imports: build an engine of the tiny dual-branch model and run it if there is a GPU."""
    import importlib.util

    found = [m for m in ("tensorrt", "tensorrt_rtx") if importlib.util.find_spec(m)]
    if not found:
        return {"available": False, "reason": "neither tensorrt nor tensorrt_rtx imports on this machine "
                "(no registry reachable to install them; the RTX wheel is larger than what one call may carry)"}
    import numpy as np
    import torch

    from specdet.export.artifact import export_checkpoint
    from specdet.export.engine import build_engine
    from specdet.runtime import create_runner

    backend = "tensorrt" if "tensorrt" in found else "tensorrt-rtx"
    checkpoint = ctx.checkpoint("dual_branch_tiny")
    onnx = ctx.work / "dual_branch_tiny.onnx"
    export_checkpoint(checkpoint, onnx, fft="matmul", max_batch=8, progress=False)
    result: dict[str, Any] = {"available": True, "libraries": found, "backend": backend}
    started = time.perf_counter()
    try:
        engine = build_engine(onnx, ctx.work / "dual_branch_tiny.engine", backend=backend, batch=(1, 4, 8))
    except Exception as error:  # noqa: BLE001 (record what happens, e.g. no Hopper target in TensorRT-RTX)
        result.update(built=False, error=f"{type(error).__name__}: {error}"[:1000])
        return result
    result.update(built=True, build_s=round(time.perf_counter() - started, 1), engine_mb=engine.path.stat().st_size / 2**20)
    if not torch.cuda.is_available():
        result.update(ran=False, reason="no CUDA device: the engine was built ahead of time and not run")
        return result
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    try:
        with create_runner(engine.path, "tensorrt") as runner:
            with_engine = runner.infer(x)["probability"]
        with create_runner(checkpoint, "torch") as runner:
            reference = runner.infer(x)["probability"]
        result.update(ran=True, max_abs_probability_diff=float(np.max(np.abs(with_engine - reference))))
    except Exception as error:  # noqa: BLE001
        result.update(ran=False, error=f"{type(error).__name__}: {error}"[:1000])
    return result


# ---- files to probabilities ------------------------------------------------------------------------


def end_to_end(ctx: Context, name: str) -> dict[str, Any]:
    """detect-bench --end-to-end on photo-size JPEGs made here: the input pipeline per worker count, GPU decoding."""
    from specdet.benchmarks import end_to_end as e2e
    from specdet.runtime import pipeline

    model = ctx.model(name)
    cpus = pipeline.cpus()
    if ctx.dry_run:
        count, sizes, variant, workers, batch, repeats = 12, (60, 120), "torch-fp32", (0, 1, 2), 4, 1
    else:
        count, sizes, variant, batch, repeats = 960, (500, 1500), "torch-cuda-graphs-fp16", 32, 3
        workers = (0, *sorted({max(1, cpus // 2), max(1, cpus - 1), cpus}))
    photos = ctx.work / "photos"
    files = sorted(photos.glob("*.jpg")) or e2e.make_photos(photos, count, sizes=sizes, processes=cpus)
    record = e2e.run(ctx.checkpoint(model), variant, files, workers=workers, batch_size=batch, repeats=repeats,
                     decode_on_device=True, resize_on_device=True, command=f"gpu_suite: {model} {variant} end to end")
    return {"model": model, "markdown": e2e.markdown(record), "record": record}


# ---- the registry, in order of value -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    what: str
    estimate_s: float  # about how long it takes on an H100/H200, building included
    estimate_dry_s: float  # the same for --dry-run on a 2-core CPU
    run: Callable[[Context], dict[str, Any]]


def _steps() -> list[Step]:
    dual, rine = FULL_MODELS
    every = EAGER + WITH_KERNELS + GRAPHS + FAST
    return [
        Step("kernel_tests", "build the kernel library (native arch) and run its contract tests", 120, 240, kernel_tests),
        Step("kernels_bench", "kernel micro-benchmark, batch 1/8/32, FP32/FP16, blocks of 50 calls on rotated inputs; "
             "choose auto", 90, 60, kernels_bench),
        Step(f"bench:{dual}", "detect-bench GPU variants on the device, batch 1/8/32/128; transfers apart", 175, 60,
             lambda ctx: model_bench(ctx, dual, every, BENCH_BATCHES[dual])),
        Step(f"bench:{rine}", "detect-bench GPU variants on the device, batch 1/8/32; transfers apart", 220, 60,
             lambda ctx: model_bench(ctx, rine, every, BENCH_BATCHES[rine])),
        Step(f"end_to_end:{dual}", "JPEG files to probabilities: input workers, CUDA graph FP16, nvJPEG", 70, 60,
             lambda ctx: end_to_end(ctx, dual)),
        Step(f"end_to_end:{rine}", "JPEG files to probabilities: input workers, CUDA graph FP16, nvJPEG", 80, 60,
             lambda ctx: end_to_end(ctx, rine)),
        Step(f"train:{dual}", "training steps: recipe batch, bf16 autocast, channels-last", 45, 30,
             lambda ctx: train_steps(ctx, dual, compile=False)),
        Step(f"train:{rine}", "training steps: recipe batch, bf16 autocast, channels-last", 60, 30,
             lambda ctx: train_steps(ctx, rine, compile=False)),
        Step("tensorrt", "TensorRT / TensorRT-RTX engine build and execution, where installed", 20, 60, tensorrt_engines),
        Step(f"compile:{dual}", "torch.compile variants, batch 1/32", 150, 0,
             lambda ctx: model_bench(ctx, dual, EAGER[:1] + COMPILED, (1, 32))),
        Step(f"train-compile:{dual}", "training steps under torch.compile", 150, 0,
             lambda ctx: train_steps(ctx, dual, compile=True)),
        Step(f"compile:{rine}", "torch.compile variants, batch 1/32", 200, 0,
             lambda ctx: model_bench(ctx, rine, EAGER[:1] + COMPILED, (1, 32))),
        Step(f"compile-fast:{dual}", "the fast path with torch.compile max-autotune inside its CUDA graphs, batch 1/32",
             300, 0, lambda ctx: model_bench(ctx, dual, FAST[:1] + FAST_COMPILED, (1, 32))),
        Step(f"compile-fast:{rine}", "the fast path with torch.compile max-autotune inside its CUDA graphs, batch 1/32",
             360, 0, lambda ctx: model_bench(ctx, rine, FAST[:1] + FAST_COMPILED, (1, 32))),
    ]


STEPS: dict[str, Step] = {step.name: step for step in _steps()}
# What --dry-run leaves out: torch.compile needs minutes of inductor on a 2-core CPU and would say nothing about a GPU.
DRY_RUN_SKIPS = {name for name, step in STEPS.items() if step.estimate_dry_s == 0}
