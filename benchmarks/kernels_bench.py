"""GPU micro-benchmark of the spectral kernels: which method wins where, at the models' sizes.

    python -m specdet.benchmarks.kernels_bench --out benchmarks/results/kernels-h100.json

Band split, ``[32, 3, 224, 224]`` to 4 bands, float32 and float16:
- ``kernel-cufft``, ``kernel-dft``: our launch function (specdet_band_split) per method;
- ``seed-fft-chain``: the seed code's chain, one complex ``fft2`` and four masked ``ifft2().real``
  (float16 runs it in float32: torch.fft has no float16 for sizes that are not powers of two);
- ``torch-rfft``: the reference (``rfft2``, one batched masked ``irfft2``), same rule for float16;
- ``matmul-lowering``: the same code under ``ComplexLowering("matmul")``: the DFT as cuBLAS
  matrix products, the tensor-core DFT (float16; float32 with and without TF32).
The spectrum statistic likewise on the SSCA map ``[32, 128, 16, 16]``. Then
the dual-branch model's forward (ViT-B/16 configuration, random weights) with
the torch op over our kernel against the plain torch version.

Each row: median, 10th and 90th percentile of CUDA-event times over the
repetitions, and the largest difference from the float64 NumPy reference.
Writes JSON with the device and library versions. Without a CUDA device it
says so and exits with status 2: it measures nothing on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from specdet.kernels import library, reference
from specdet.models import spectral

RESULTS = Path(__file__).resolve().parent / "results"


def time_cuda(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": float(np.median(times)), "p10_ms": float(np.percentile(times, 10)), "p90_ms": float(np.percentile(times, 90))}


@contextlib.contextmanager
def tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def kernel_call(lib: library.KernelLibrary, op: str, x: torch.Tensor, attributes: dict, method: str) -> Callable[[], torch.Tensor]:
    dtype = {torch.float32: "float32", torch.float16: "float16"}[x.dtype]
    params, out_shape = library.op_params(op, x.shape, attributes, dtype, method)
    y = x.new_empty(out_shape)
    size = lib.workspace_size(op, params)
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=x.device)
    plans = lib.create_plans()
    lib.prepare(op, params, plans)

    def call() -> torch.Tensor:
        lib.launch(op, params, x.data_ptr(), y.data_ptr(), workspace.data_ptr(), size, plans, torch.cuda.current_stream().cuda_stream)
        return y

    return call


def seed_chain(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    spectrum = torch.fft.fft2(x)
    return torch.stack([torch.fft.ifft2(spectrum * m).real for m in masks], dim=1)


def in_float32(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    if x.dtype == torch.float32:
        return lambda: fn(x)
    return lambda: fn(x.float()).to(x.dtype)


def lowered(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, allow_tf32: bool) -> Callable[[], torch.Tensor]:
    from specdet.export.lowering import ComplexLowering

    def call() -> torch.Tensor:
        with tf32(allow_tf32), ComplexLowering("matmul"):
            return fn(x)

    return call


def measure(rows: list, label: str, dtype: str, shape: list, impl: str, fn: Callable[[], torch.Tensor], expected: np.ndarray, args) -> None:
    row = {"op": label, "impl": impl, "dtype": dtype, "shape": shape}
    try:
        out = fn()
        torch.cuda.synchronize()
        row["max_abs_error"] = float(np.max(np.abs(out.double().cpu().numpy() - expected)))
        row.update(time_cuda(fn, args.warmup, args.repeats))
    except Exception as error:  # noqa: BLE001 (one failing candidate must not hide the others)
        row["error"] = f"{type(error).__name__}: {error}"
        if args.verbose:
            traceback.print_exc()
    rows.append(row)
    timing = f"{row['median_ms']:8.3f} ms (p10 {row['p10_ms']:.3f}, p90 {row['p90_ms']:.3f})" if "median_ms" in row else row.get("error", "")
    error = f"  max|err| {row['max_abs_error']:.2e}" if "max_abs_error" in row else ""
    print(f"{label:22s} {dtype:8s} {impl:22s} {timing}{error}", flush=True)


def bench_ops(lib: library.KernelLibrary, args) -> list:
    rows: list = []
    device = torch.device("cuda")
    edges = spectral.default_band_edges(4)
    b, c, s = args.batch, args.channels, args.size
    image16 = np.random.default_rng(0).standard_normal((b, c, s, s)).astype(np.float16)
    expected_bands = reference.band_split(image16, edges, "zero")
    masks = spectral.radial_band_masks(s, s, edges, "zero").to(device)

    def band_split_reference(t: torch.Tensor) -> torch.Tensor:
        return spectral.band_split_reference(t, masks)

    fmap16 = np.random.default_rng(1).standard_normal((b, args.ssca_channels, args.ssca_size, args.ssca_size)).astype(np.float16)
    expected_stat = reference.spectrum_magnitude_mean(fmap16)
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
        x = torch.from_numpy(image16).to(device, dtype)
        shape = list(x.shape)
        attrs = {"edges": edges, "centre": "zero"}
        for method in ("cufft", "dft"):
            measure(rows, "band_split", name, shape, f"kernel-{method}", kernel_call(lib, "BandSplit", x, attrs, method), expected_bands, args)
        measure(rows, "band_split", name, shape, "seed-fft-chain", in_float32(lambda t: seed_chain(t, masks), x), expected_bands, args)
        measure(rows, "band_split", name, shape, "torch-rfft", in_float32(band_split_reference, x), expected_bands, args)
        measure(rows, "band_split", name, shape, "matmul-lowering", lowered(band_split_reference, x, False), expected_bands, args)
        if dtype == torch.float32:
            measure(rows, "band_split", name, shape, "matmul-lowering-tf32", lowered(band_split_reference, x, True), expected_bands, args)

        f = torch.from_numpy(fmap16).to(device, dtype)
        shape = list(f.shape)
        for method in ("cufft", "dft"):
            measure(rows, "spectrum_magnitude_mean", name, shape, f"kernel-{method}", kernel_call(lib, "SpectrumMagnitudeMean", f, {}, method), expected_stat, args)
        measure(rows, "spectrum_magnitude_mean", name, shape, "torch-rfft", in_float32(spectral.spectrum_magnitude_mean_reference, f), expected_stat, args)
        measure(rows, "spectrum_magnitude_mean", name, shape, "matmul-lowering", lowered(spectral.spectrum_magnitude_mean_reference, f, False), expected_stat, args)
    return rows


def bench_model(name: str, args, rows: list) -> None:
    from specdet.kernels.torch_ops import use_kernels
    from specdet.models import ScoringModule, create_model

    torch.manual_seed(0)
    model = ScoringModule(create_model(name)).eval().cuda()
    x = torch.randn(args.batch, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        expected = model(x)[0].double().cpu().numpy()
    variants = {
        ("float32", "torch"): (contextlib.nullcontext, False),
        ("float32", "kernels"): (use_kernels, False),
        ("float16-autocast", "torch"): (contextlib.nullcontext, True),
        ("float16-autocast", "kernels"): (use_kernels, True),
    }
    for (dtype, impl), (context, autocast) in variants.items():

        def forward(context=context, autocast=autocast) -> torch.Tensor:
            with torch.inference_mode(), context(), torch.autocast("cuda", torch.float16, enabled=autocast):
                return model(x)[0]

        measure(rows, f"model:{name}", dtype, [args.batch, 3, 224, 224], impl, forward, expected, args)


def bench_models(args) -> list:
    rows: list = []
    for name in args.models:
        bench_model(name, args, rows)
        torch.cuda.empty_cache()
    return rows


def environment(lib: library.KernelLibrary | None) -> dict:
    from specdet.export.artifact import library_versions

    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "versions": library_versions(),
        "kernel_library": str(lib.path) if lib else None,
        "system": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdet.benchmarks.kernels_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/<date>-<device>-kernels.json)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ssca-channels", type=int, default=128, help="channels of the SSCA map (proj_dim)")
    parser.add_argument("--ssca-size", type=int, default=16, help="side of the SSCA map (224 / 14)")
    parser.add_argument("--models", default="dual_branch_vit_b16", help="comma-separated; empty for none")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if not torch.cuda.is_available():
        print(
            "kernels_bench: no CUDA device here, nothing measured. This benchmark times the CUDA kernels "
            "(cuFFT and DFT methods, float32 and float16) against torch.fft and the matmul lowering on a GPU; "
            "run it on a machine with one (it builds the kernel library with nvcc, or set SPECDET_KERNELS_LIB).",
            file=sys.stderr,
        )
        return 2
    major, minor = torch.cuda.get_device_capability()
    lib = library.load(archs=f"{major}{minor}")
    env = environment(lib)
    print(f"{env['device']} (sm_{major}{minor}), torch {torch.__version__}, CUDA {env['torch_cuda']}", flush=True)
    rows = bench_ops(lib, args) + bench_models(args)
    report = {
        "command": " ".join([sys.executable, "-m", "specdet.benchmarks.kernels_bench", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "environment": env,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "method_env": os.environ.get("SPECDET_KERNELS_METHOD", "auto"),
        "rows": rows,
    }
    out = Path(args.out) if args.out else RESULTS / f"{datetime.date.today()}-{env['device'].replace(' ', '_')}-kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
