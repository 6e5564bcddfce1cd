"""GPU micro-benchmark of the spectral kernels: which method wins where, at the models' sizes.

    python -m specdet.benchmarks.kernels_bench --out benchmarks/results/kernels-h100.json
    python -m specdet.benchmarks.kernels_bench --device cpu --batches 1 --size 32 ...   # the CPU emulation, for CI

Band split, ``[B, 3, 224, 224]`` to 4 bands for each B of ``--batches`` (1, 8, 32), float32 (what the models
feed it: the FP32 image, also under autocast) and float16:
- ``kernel-cufft``, ``kernel-dft``: our launch function (specdet_band_split) per method;
- ``seed-fft-chain``: the seed code's chain, one complex ``fft2`` and four masked ``ifft2().real``
  (float16 runs it in float32: torch.fft has no float16 for sizes that are not powers of two);
- ``torch-rfft``: the reference (``rfft2``, one batched masked ``irfft2``), same rule for float16: the
  models' own torch.fft path, which the kernels replace, so the baseline of every speed-up in the headline;
- ``matmul-lowering``: the same code under ``ComplexLowering("matmul")``: the DFT as cuBLAS
  matrix products, the tensor-core DFT (float16; float32 with and without TF32).
The spectrum statistic likewise on the SSCA map ``[32, 128, 16, 16]``. Then
the dual-branch model's forward (ViT-B/16 configuration, random weights) with
the torch op over our kernel against the plain torch version.

Timing (:func:`time_calls`): ``--blocks`` blocks of ``--calls`` back-to-back
calls between one pair of CUDA events, so a call's host launch cost overlaps
the GPU's work instead of being timed, on inputs rotated through copies that
together exceed twice the GPU's L2 cache (``--rotate-mib``), so no call finds
its input in L2 from the one before. Each row: the median time per call over
the blocks, the spread between blocks, the bytes a call must move (input
read, output written) as a fraction of the GPU's memory bandwidth
(:func:`specdet.benchmarks.peaks.gpu_peaks`), and the largest difference from
the float64 NumPy reference. :func:`summarize` gives each kernel's speed-up
over the models' torch.fft path and the seed's chain, and
:func:`choose_methods` the faster method per op (what ``auto`` should be).
Writes JSON with the device and library versions. Without a CUDA device it
says so and exits with status 2, unless ``--device cpu``: then the kernels
run in the CPU emulation library, which checks the plumbing, not the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import os
import platform
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from specdet import cli
from specdet.benchmarks import peaks, stats, timing
from specdet.kernels import library, reference
from specdet.models import spectral

RESULTS = Path(__file__).resolve().parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rotation(x: torch.Tensor, rotate_bytes: float) -> list[torch.Tensor]:
    """``x`` and copies of it, together at least ``rotate_bytes`` (at most 512 tensors): inputs to rotate through."""
    one = x.numel() * x.element_size()
    count = min(512, max(1, math.ceil(rotate_bytes / one))) if one else 1
    return [x] + [x.clone() for _ in range(count - 1)]


def time_calls(fn: Callable[[torch.Tensor], object], inputs: list[torch.Tensor], plan: timing.Plan,
               clock: timing.Clock) -> dict:
    """Milliseconds per call of ``fn`` over ``inputs`` in turn: ``plan.iters`` blocks of ``plan.device_calls``
    back-to-back calls, one clock reading before and after each block (CUDA events on a GPU)."""
    turn = itertools.cycle(inputs)
    (samples,) = timing.run([timing.Subject("call", lambda: fn(next(turn)), clock, calls=plan.device_calls)], plan)
    ms = [t * 1e3 for t in samples.seconds]
    return {"median_ms": stats.percentile(ms, 50), "min_ms": min(ms), "max_ms": max(ms),
            "block_spread": timing.block_spread(ms), "blocks": len(ms), "calls_per_block": plan.device_calls,
            "inputs_rotated": len(inputs)}


@contextlib.contextmanager
def tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def kernel_call(lib: library.KernelLibrary, op: str, like: torch.Tensor, attributes: dict, method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Our launch on an input of ``like``'s shape and dtype; the output, workspace and plans made once here."""
    dtype = {torch.float32: "float32", torch.float16: "float16"}[like.dtype]
    params, out_shape = library.op_params(op, like.shape, attributes, dtype, method)
    y = like.new_empty(out_shape)
    size = lib.workspace_size(op, params)
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=like.device)
    plans = lib.create_plans()
    lib.prepare(op, params, plans)

    def call(x: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream().cuda_stream if x.is_cuda else 0  # the emulation takes host pointers
        lib.launch(op, params, x.data_ptr(), y.data_ptr(), workspace.data_ptr(), size, plans, stream)
        return y

    return call


def seed_chain(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    spectrum = torch.fft.fft2(x)
    return torch.stack([torch.fft.ifft2(spectrum * m).real for m in masks], dim=1)


def in_float32(fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    if dtype == torch.float32:
        return fn
    return lambda x: fn(x.float()).to(dtype)


def lowered(fn: Callable[[torch.Tensor], torch.Tensor], allow_tf32: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    from specdet.export.lowering import ComplexLowering

    def call(x: torch.Tensor) -> torch.Tensor:
        with tf32(allow_tf32), ComplexLowering("matmul"):
            return fn(x)

    return call


def measure(rows: list, label: str, dtype: str, x: torch.Tensor, impl: str, fn: Callable[[torch.Tensor], torch.Tensor],
            expected: np.ndarray, args, moved_bytes: int | None = None) -> None:
    """One row: ``fn``'s error on ``x`` against ``expected``, then its time on ``x`` and copies (:func:`rotation`).

    ``moved_bytes``: what one call must read and write at least, for the fraction of the memory bandwidth."""
    row = {"op": label, "impl": impl, "dtype": dtype, "shape": list(x.shape)}
    try:
        out = fn(x)
        synchronize(args.device)
        row["max_abs_error"] = float(np.max(np.abs(out.double().cpu().numpy() - expected)))
        inputs = rotation(x, args.rotate_bytes)
        row.update(time_calls(fn, inputs, args.plan, args.clock))
        del inputs
        bandwidth = (args.gpu_peak or {}).get("memory_bytes_per_s")
        row["bytes_moved"] = moved_bytes
        row["fraction_of_memory_bandwidth"] = (moved_bytes / (row["median_ms"] * 1e-3) / bandwidth
                                               if moved_bytes and bandwidth and row["median_ms"] > 0 else None)
    except Exception as error:  # noqa: BLE001 (one failing candidate must not hide the others)
        row["error"] = f"{type(error).__name__}: {error}"
        if args.verbose:
            traceback.print_exc()
    rows.append(row)
    shape = row["shape"]
    spread = row.get("block_spread")
    text = (f"{row['median_ms']:8.3f} ms (spread {spread * 100 if spread is not None else 0:.1f}%, "
            f"{row['calls_per_block']} calls x {row['blocks']} blocks, {row['inputs_rotated']} inputs)"
            if "median_ms" in row else row.get("error", ""))
    error = f"  max|err| {row['max_abs_error']:.2e}" if "max_abs_error" in row else ""
    print(f"{label:22s} {dtype:8s} {str(shape):18s} {impl:22s} {text}{error}", flush=True)


def bench_ops(lib: library.KernelLibrary, args) -> list:
    rows: list = []
    for batch in args.batches:
        rows += bench_ops_at(lib, args, batch)
    return rows


def bench_ops_at(lib: library.KernelLibrary, args, b: int) -> list:
    rows: list = []
    device = args.device
    edges = spectral.default_band_edges(4)
    c, s = args.channels, args.size
    image16 = np.random.default_rng(0).standard_normal((b, c, s, s)).astype(np.float16)
    expected_bands = reference.band_split(image16, edges, "zero")
    masks = spectral.radial_band_masks(s, s, edges, "zero").to(device)

    def band_split_reference(t: torch.Tensor) -> torch.Tensor:
        return spectral.band_split_reference(t, masks)

    fmap16 = np.random.default_rng(1).standard_normal((b, args.ssca_channels, args.ssca_size, args.ssca_size)).astype(np.float16)
    expected_stat = reference.spectrum_magnitude_mean(fmap16)
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
        x = torch.from_numpy(image16).to(device, dtype)
        moved = x.numel() * x.element_size() * (1 + len(edges) + 1)  # the image read, its bands written
        attrs = {"edges": edges, "centre": "zero"}
        for method in ("cufft", "dft"):
            call = kernel_call(lib, "BandSplit", x, attrs, method)
            measure(rows, "band_split", name, x, f"kernel-{method}", call, expected_bands, args, moved)
        measure(rows, "band_split", name, x, "seed-fft-chain", in_float32(lambda t: seed_chain(t, masks), dtype), expected_bands, args, moved)
        measure(rows, "band_split", name, x, "torch-rfft", in_float32(band_split_reference, dtype), expected_bands, args, moved)
        measure(rows, "band_split", name, x, "matmul-lowering", lowered(band_split_reference, False), expected_bands, args, moved)
        if dtype == torch.float32 and device.type == "cuda":
            measure(rows, "band_split", name, x, "matmul-lowering-tf32", lowered(band_split_reference, True), expected_bands, args, moved)

        f = torch.from_numpy(fmap16).to(device, dtype)
        moved = f.numel() * f.element_size() + f.shape[0] * f.shape[1] * f.element_size()
        for method in ("cufft", "dft"):
            call = kernel_call(lib, "SpectrumMagnitudeMean", f, {}, method)
            measure(rows, "spectrum_magnitude_mean", name, f, f"kernel-{method}", call, expected_stat, args, moved)
        statistic = spectral.spectrum_magnitude_mean_reference
        measure(rows, "spectrum_magnitude_mean", name, f, "torch-rfft", in_float32(statistic, dtype), expected_stat, args, moved)
        measure(rows, "spectrum_magnitude_mean", name, f, "matmul-lowering", lowered(statistic, False), expected_stat, args, moved)
    return rows


def bench_model(name: str, args, rows: list) -> None:
    from specdet.kernels.torch_ops import use_kernels
    from specdet.models import ScoringModule, create_model, model_config

    torch.manual_seed(0)
    device = args.device
    model = ScoringModule(create_model(name)).eval().to(device)
    size = model_config(name).input_size
    batch = max(args.batches)
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        expected = model(x)[0].double().cpu().numpy()
    half = torch.float16 if device.type == "cuda" else torch.bfloat16  # CPU autocast: bfloat16
    variants = {
        ("float32", "torch"): (contextlib.nullcontext, False),
        ("float32", "kernels"): (use_kernels, False),
        (f"{str(half).split('.')[-1]}-autocast", "torch"): (contextlib.nullcontext, True),
        (f"{str(half).split('.')[-1]}-autocast", "kernels"): (use_kernels, True),
    }
    for (dtype, impl), (context, autocast) in variants.items():

        def forward(x: torch.Tensor, context=context, autocast=autocast) -> torch.Tensor:
            with torch.inference_mode(), context(), torch.autocast(device.type, half, enabled=autocast):
                return model(x)[0]

        measure(rows, f"model:{name}", dtype, x, impl, forward, expected, args)


def bench_models(args) -> list:
    rows: list = []
    for name in args.models:
        bench_model(name, args, rows)
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# The models' own torch.fft path is what the kernels replace: the baseline of the headline. The seed's chain
# (which nothing ships) and the matmul lowering are shown beside it.
BASELINE = "torch-rfft"
# What a model feeds each op: the dual-branch model's band split takes the FP32 image (also under autocast), the
# SSCA statistic the feature map in the autocast dtype. Other rows are measured, not what runs.
MODEL_DTYPES = {"band_split": ("float32",), "spectrum_magnitude_mean": ("float32", "float16")}


def summarize(rows: list) -> list:
    """Per op, dtype and shape: each kernel method's time, its speed-up over the models' torch.fft path, the seed's
    chain and the matmul lowering, its fraction of the memory bandwidth, and whether a model runs it."""
    groups: dict = {}
    bandwidth: dict = {}
    for row in rows:
        if "median_ms" in row and not row["op"].startswith("model:"):
            groups.setdefault((row["op"], row["dtype"], tuple(row["shape"])), {})[row["impl"]] = row["median_ms"]
            bandwidth[(row["op"], row["dtype"], tuple(row["shape"]), row["impl"])] = row.get("fraction_of_memory_bandwidth")
    summary = []
    for (op, dtype, shape), times in groups.items():
        for impl, ms in times.items():
            if not impl.startswith("kernel-"):
                continue
            entry = {"op": op, "dtype": dtype, "shape": list(shape), "method": impl.removeprefix("kernel-"), "median_ms": ms,
                     "model_runs_it": dtype in MODEL_DTYPES.get(op, ()),
                     "fraction_of_memory_bandwidth": bandwidth.get((op, dtype, shape, impl))}
            for other in (BASELINE, "seed-fft-chain", "matmul-lowering"):
                entry[f"speedup_vs_{other}"] = times[other] / ms if other in times else None
            summary.append(entry)
    return summary


def choose_methods(rows: list) -> dict[str, str]:
    """Per op, the kernel method with the smaller total median time over every dtype and shape both ran."""
    totals: dict = {}
    for row in rows:
        if "median_ms" in row and row["impl"].startswith("kernel-"):
            key = (row["op"], row["dtype"], tuple(row["shape"]))
            totals.setdefault(row["op"], {}).setdefault(key, {})[row["impl"].removeprefix("kernel-")] = row["median_ms"]
    chosen = {}
    for op, cases in totals.items():
        both = [times for times in cases.values() if len(times) == 2]
        if both:
            methods = both[0].keys()
            chosen[op] = min(methods, key=lambda m: sum(times[m] for times in both))
    return chosen


def environment(lib: library.KernelLibrary | None, device: torch.device) -> dict:
    from specdet.benchmarks import machine
    from specdet.versions import library_versions

    env = {
        "gpu_math": machine.gpu_math(),
        "device": "cpu (kernels in the emulation library)",
        "torch_cuda": torch.version.cuda,
        "versions": library_versions(),
        "kernel_library": str(lib.path) if lib else None,
        "system": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, compute_capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                   l2_cache_mib=l2_bytes() / 2**20, peak=peaks.gpu_peaks(props.name))
    return env


def l2_bytes() -> int:
    """The GPU's L2 cache (60 MiB on an H200 is what torch reports; 50 MiB where this torch does not say)."""
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20))


def run(args) -> dict:
    """Every row (ops, then models), the summary and the chosen methods, as the JSON report holds them."""
    if args.device.type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        lib = library.load(archs=f"{major}{minor}")
    else:
        lib = library.load_emulation()
    env = environment(lib, args.device)
    args.gpu_peak = env.get("peak")
    if args.rotate_mib is None:
        args.rotate_mib = 2 * l2_bytes() / 2**20 if args.device.type == "cuda" else 0.0
    args.rotate_bytes = args.rotate_mib * 2**20
    args.plan = timing.Plan(warmup=args.warmup, iters=args.blocks, device_calls=args.calls)
    args.clock = timing.CudaEventClock() if args.device.type == "cuda" else timing.MonotonicClock()
    print(f"{env['device']}, torch {torch.__version__}, CUDA {env['torch_cuda']}", flush=True)
    rows = bench_ops(lib, args) + bench_models(args)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "environment": env,
        "settings": {k: str(v) if k == "device" else v for k, v in vars(args).items()
                     if k not in ("out", "plan", "clock", "gpu_peak")},
        "method_env": os.environ.get("SPECDET_KERNELS_METHOD", "auto"),
        "rows": rows,
        "summary": summarize(rows),
        "chosen_methods": choose_methods(rows),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m specdet.benchmarks.kernels_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/<date>-<device>-kernels.json)")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes (default: 1,8,32); "
                        "the models run at the largest")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: the kernels in the CPU emulation library, tiny sizes only (a check, not a measurement)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ssca-channels", type=int, default=128, help="channels of the SSCA map (proj_dim)")
    parser.add_argument("--ssca-size", type=int, default=16, help="side of the SSCA map (224 / 14)")
    parser.add_argument("--models", default="dual_branch_vit_b16", help="comma-separated; empty for none")
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks per row (default: 5)")
    parser.add_argument("--calls", type=int, default=50, help="back-to-back calls per block, one event pair around "
                        "them (default: 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first (default: 10)")
    parser.add_argument("--rotate-mib", type=float, help="rotate through copies of each input adding up to this "
                        "(default: twice the GPU's L2 cache; 0 on the CPU)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    args.device = torch.device(args.device)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print(
            "kernels_bench: no CUDA device here, nothing measured. This benchmark times the CUDA kernels "
            "(cuFFT and DFT methods, float32 and float16) against torch.fft and the matmul lowering on a GPU; "
            "run it on a machine with one (it builds the kernel library with nvcc, or set SPECDET_KERNELS_LIB); "
            "--device cpu checks the plumbing in the CPU emulation.",
            file=sys.stderr,
        )
        return 2
    command = " ".join([sys.executable, "-m", "specdet.benchmarks.kernels_bench", *(argv if argv is not None else sys.argv[1:])])
    report = {"command": command, **run(args)}
    device = report["environment"]["device"].split(" ")[0] if args.device.type == "cpu" else report["environment"]["device"]
    out = Path(args.out) if args.out else RESULTS / f"{datetime.date.today()}-{device.replace(' ', '_')}-kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
