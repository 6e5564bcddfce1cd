"""``detect-bench``: latency and accuracy of every backend against the PyTorch reference.

    detect-bench [ARTIFACT...] [--backends torch,onnxruntime,tensorrt,...] [--batch-sizes 1,8,32]
                 [--images DIR] [--max-images N] [--warmup N] [--iters N | --seconds S]
                 [--sequential] [--device-calls N] [--threads N] [--profile] [--out DIR] [--no-plots]

ARTIFACTs are one model's checkpoint (``.pth``, the reference: PyTorch
eager FP32) and exported files (``.onnx``, ``.engine``); without a ``.pth``
the checkpoint the manifests name is used. With no ARTIFACT the built-in
default runs: a tiny detector saved and exported into a temporary folder,
scikit-image's sample photos, torch against onnxruntime on the CPU.

Prints the Markdown report and writes it with the JSON record
(``specdet/benchmarks/schema.json``) and PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from specdet import cli
from specdet.benchmarks import bench, report, timing, variants
from specdet.benchmarks.progress import Progress
from specdet.errors import SpecdetError
from specdet.files import check_output
from specdet.limits import MAX_WORKERS
from specdet.runtime.base import BACKEND_BY_SUFFIX

DEFAULT_OUT = "bench-out"


def parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="detect-bench",
        description="Latency and accuracy of every backend against the PyTorch FP32 reference.",
        epilog="Variants: " + "; ".join(f"{v.name} ({v.summary})" for v in variants.VARIANTS.values()),
    )
    p.add_argument("artifacts", nargs="*", type=Path, metavar="ARTIFACT",
                   help="one model's .pth checkpoint and .onnx/.engine files (none: the built-in default)")
    p.add_argument("--backends", metavar="LIST", help="comma-separated backends (each: every variant of it that can run here) or "
                   f"variant names (default: {bench.DEFAULT_SELECTION}, where applicable)")
    p.add_argument("--batch-sizes", metavar="LIST", help="comma-separated batch sizes (default: 1,8; with --end-to-end, "
                   "one: 8)")
    p.add_argument("--images", type=Path, metavar="DIR", help="folder of images, labelled when laid out as 0_real/1_fake "
                   "(per source); default: scikit-image's sample photos")
    p.add_argument("--max-images", type=cli.POSITIVE, metavar="N", help="score at most this many images, spread over the folder")
    p.add_argument("--warmup", type=cli.int_range(0, 100_000), metavar="N", default=2, help="untimed rounds per batch size (default: 2)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=cli.int_range(1, 1_000_000), metavar="N", help="timed rounds per batch size (default: 10)")
    budget.add_argument("--seconds", type=cli.number_range(0.0, 86_400.0, above=True), metavar="S",
                        help="time each batch size until the slowest variant has run this long (at least 3 rounds)")
    p.add_argument("--sequential", action="store_true",
                   help="time each variant on its own in turn instead of interleaving them call by call")
    p.add_argument("--device-calls", type=cli.int_range(1, 100_000), metavar="N", default=50,
                   help="GPU variants: back-to-back calls per timed sample, on a batch already on the device (default: 50)")
    p.add_argument("--threads", type=cli.THREADS, metavar="N", help="CPU threads per backend (default: each backend's own)")
    p.add_argument("--out", type=Path, metavar="DIR", default=Path(DEFAULT_OUT),
                   help=f"folder for the JSON, Markdown and PNG files (default: {DEFAULT_OUT})")
    p.add_argument("--profile", action="store_true",
                   help="also record where each CPU variant's time goes, by operator type (smallest batch size)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    e2e = p.add_argument_group("files to probabilities (--end-to-end)")
    e2e.add_argument("--end-to-end", action="store_true",
                     help="time one ARTIFACT from JPEG files on disk to probabilities, per number of input workers "
                     "(--images, default: generated photo-size JPEGs; --backends: one variant; the first --batch-sizes)")
    e2e.add_argument("--workers", metavar="LIST", default=None,
                     help="with --end-to-end: comma-separated input worker counts, 0 being the serial loop "
                     "(default: 0,1,2,... up to the CPUs, doubling)")
    e2e.add_argument("--repeats", type=cli.int_range(1, 1000), default=3, metavar="N",
                     help="with --end-to-end: timed passes over the files per worker count (default: 3)")
    e2e.add_argument("--photos", type=cli.int_range(1, 1_000_000), default=200, metavar="N",
                     help="with --end-to-end and no --images: how many photo-size JPEGs to generate (default: 200)")
    e2e.add_argument("--resize-on-device", action="store_true",
                     help="with --end-to-end: also time the workers decoding only and the runner resizing on its device "
                     "(Pillow's arithmetic, the same bytes)")
    e2e.add_argument("--decode", choices=("pillow", "gpu"), default="pillow",
                     help="with --end-to-end on a GPU variant, gpu: also time JPEGs decoded with nvJPEG on the GPU "
                     "(detect-predict --decode gpu; not Pillow-exact: the report gives the differences)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.command = " ".join(["detect-bench", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    return cli.run(_bench, args)


def _bench(args: argparse.Namespace) -> int:
    check_output(args.out, "benchmark report", folder=True)
    if args.end_to_end:
        return _end_to_end(args)
    for flag, given in (("--workers", args.workers), ("--decode gpu", args.decode == "gpu"),
                        ("--resize-on-device", args.resize_on_device)):
        if given:
            raise SpecdetError(f"{flag} needs --end-to-end")
    try:
        plan = timing.Plan(args.warmup, None if args.seconds is not None else (10 if args.iters is None else args.iters), args.seconds,
                           interleave=not args.sequential, device_calls=args.device_calls)
    except ValueError as err:
        raise SpecdetError(f"{err}: check --warmup, --iters and --seconds") from None
    batch_sizes = bench.parse_batch_sizes(args.batch_sizes or "1,8")
    variants.parse_selection(args.backends or bench.DEFAULT_SELECTION)  # unknown names fail before any export
    config = bench.Config(
        artifacts=list(args.artifacts), backends=args.backends, batch_sizes=batch_sizes, images=args.images,
        max_images=args.max_images, plan=plan, threads=args.threads, command=args.command, profile=args.profile,
    )
    progress = Progress(enabled=not args.quiet)
    if args.artifacts:
        record = bench.run(config, progress)
    else:
        bench.check_batch_limit(batch_sizes)  # before the built-in model is exported for the largest
        with tempfile.TemporaryDirectory(prefix="detect-bench-") as folder:
            config.artifacts = bench.builtin_artifacts(Path(folder), max(batch_sizes))
            config.builtin = True
            record = bench.run(config, progress)
    paths = report.write(record, args.out, plots=not args.no_plots)
    print(report.markdown(record))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def _end_to_end(args: argparse.Namespace) -> int:
    from specdet.benchmarks import end_to_end
    from specdet.images import folder_images
    from specdet.runtime.pipeline import cpus

    if len(args.artifacts) != 1:
        raise SpecdetError("--end-to-end times one ARTIFACT: give exactly one .pth, .onnx or .engine file")
    artifact = args.artifacts[0]
    if not artifact.is_file():
        raise SpecdetError(f"artifact {artifact} not found: check the path")
    # One variant: the one named, or the first of the artifact's backend that runs here (torch-fp32, onnxruntime-cpu, ...).
    token = args.backends or BACKEND_BY_SUFFIX.get(artifact.suffix.lower(), "torch")
    (variant, _), *_ = variants.select(variants.parse_selection(token)[:1], artifact, [artifact], strict=True)
    name = variant.name
    if args.decode == "gpu" and variant.device != "cuda":
        raise SpecdetError(f"--decode gpu decodes on the GPU; {name} runs on the {variant.device}: choose a GPU "
                           "variant with --backends (torch-cuda-graphs-fp16, tensorrt, ...)")
    workers = _worker_counts(args.workers, cpus())
    batch = bench.parse_batch_sizes(args.batch_sizes or "8")[0]
    with tempfile.TemporaryDirectory(prefix="detect-bench-photos-") as folder:
        files = folder_images(args.images) if args.images else end_to_end.make_photos(Path(folder), args.photos)
        record = end_to_end.run(artifact, name, files, workers=workers, batch_size=batch, repeats=args.repeats,
                                threads=args.threads, decode_on_device=args.decode == "gpu",
                                resize_on_device=args.resize_on_device, command=args.command)
    paths = end_to_end.write(record, args.out)
    print(end_to_end.markdown(record))
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def _worker_counts(text: str | None, cpus: int) -> list[int]:
    if text is None:
        counts, n = [0], 1
        while n <= cpus:
            counts.append(n)
            n *= 2
        return counts + ([cpus] if counts[-1] != cpus else [])
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or any(not 0 <= c <= MAX_WORKERS for c in counts):
        raise SpecdetError(f"--workers {text!r}: give comma-separated counts from 0 to {MAX_WORKERS}, e.g. 0,2,4")
    return counts


if __name__ == "__main__":
    sys.exit(main())
