"""``detect-bench``: latency and accuracy of every backend against the PyTorch reference.

    detect-bench [ARTIFACT...] [--backends torch,onnxruntime,tensorrt,...] [--batch-sizes 1,8,32]
                 [--images DIR] [--max-images N] [--warmup N] [--iters N | --seconds S]
                 [--sequential] [--threads N] [--profile] [--out DIR] [--no-plots]

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
    p.add_argument("--batch-sizes", metavar="LIST", default="1,8", help="comma-separated batch sizes (default: 1,8)")
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
    p.add_argument("--threads", type=cli.THREADS, metavar="N", help="CPU threads per backend (default: each backend's own)")
    p.add_argument("--out", type=Path, metavar="DIR", default=Path(DEFAULT_OUT),
                   help=f"folder for the JSON, Markdown and PNG files (default: {DEFAULT_OUT})")
    p.add_argument("--profile", action="store_true",
                   help="also record where each CPU variant's time goes, by operator type (smallest batch size)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.command = " ".join(["detect-bench", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    return cli.run(_bench, args)


def _bench(args: argparse.Namespace) -> int:
    check_output(args.out, "benchmark report", folder=True)
    try:
        plan = timing.Plan(args.warmup, None if args.seconds is not None else (10 if args.iters is None else args.iters), args.seconds,
                           interleave=not args.sequential)
    except ValueError as err:
        raise SpecdetError(f"{err}: check --warmup, --iters and --seconds") from None
    batch_sizes = bench.parse_batch_sizes(args.batch_sizes)
    variants.parse_selection(args.backends or bench.DEFAULT_SELECTION)  # unknown names fail before any export
    config = bench.Config(
        artifacts=list(args.artifacts), backends=args.backends, batch_sizes=batch_sizes, images=args.images,
        max_images=args.max_images, plan=plan, threads=args.threads, command=args.command, profile=args.profile,
    )
    progress = Progress(enabled=not args.quiet)
    if args.artifacts:
        record = bench.run(config, progress)
    else:
        with tempfile.TemporaryDirectory(prefix="detect-bench-") as folder:
            config.artifacts = bench.builtin_artifacts(Path(folder), max(batch_sizes))
            config.builtin = True
            record = bench.run(config, progress)
    paths = report.write(record, args.out, plots=not args.no_plots)
    print(report.markdown(record))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
