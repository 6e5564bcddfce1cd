"""``detect-predict ARTIFACT PATH...``: score image files and folders with a detector."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from specdet import cli
from specdet.cli import add_debug_flag, run
from specdet.errors import SpecdetError
from specdet.images import IMAGE_SUFFIXES, collect_images
from specdet.limits import MAX_LIST_BYTES, MAX_PIXELS, MAX_PIXELS_CEILING
from specdet.progress import bar as progress_bar
from specdet.runtime.base import BACKENDS, RunnerOptions
from specdet.runtime.detector import Detector, Result
from specdet.runtime.openvino_runner import INFERENCE_PRECISIONS


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    _check_flags(parser, args)
    try:
        return run(_predict, args)
    except BrokenPipeError:
        # The reader (say `| head`) stopped early: not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parse_args``, with the paths after ``--`` taken by us: argparse (3.11) rejects them as unrecognised
    once an option comes before ``--``, because PATH may be empty (``--list``) and it has matched it already."""
    if "--" not in argv:
        return parser.parse_args(argv)
    cut = argv.index("--")
    args = parser.parse_args(argv[:cut])
    args.paths += [Path(p) for p in argv[cut + 1:]]
    return args


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="detect-predict",
        description="Print the probability that each image is generated (fake) and its label.",
    )
    parser.add_argument("artifact", type=Path, help="model.pth checkpoint, exported model.onnx or built model.engine")
    parser.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="image files or folders (searched recursively)"
    )
    parser.add_argument("--backend", choices=sorted(BACKENDS), help="default: chosen by the artifact's suffix")
    parser.add_argument("--arch", help="architecture of a bare state dict (a checkpoint names its own)")
    parser.add_argument("--batch-size", type=cli.BATCH,
                        help="images per inference call (default: 8; with --ray, the artifact's largest batch, at most 64)")
    parser.add_argument("--threads", type=cli.THREADS,
                        help="CPU threads for inference (default: the backend's; beside --workers on a CPU backend, "
                        "the CPUs the workers leave are often faster)")
    parser.add_argument("--workers", type=cli.WORKERS, metavar="N",
                        help="processes reading and decoding images while the model scores (default: one per CPU "
                        "when the model runs on a GPU, a quarter of them on a CPU backend; 0 reads them in this "
                        "process, the serial loop; with --ray: per actor, default 0)")
    parser.add_argument("--decode", choices=("pillow", "gpu"), default="pillow",
                        help="pillow (default): decode with Pillow, the exact pixels every backend is checked on; "
                        "gpu: decode JPEGs on the GPU with nvJPEG in this process (not Pillow's exact pixels: see "
                        "the README's 'Files to probabilities'), other files with Pillow")
    parser.add_argument("--max-pixels", type=cli.PIXELS, default=MAX_PIXELS, metavar="N",
                        help=f"skip images of more than N pixels, as stored or once resized (default {MAX_PIXELS}, "
                        f"at most {MAX_PIXELS_CEILING})")
    options = parser.add_argument_group("backend options (an option the backend lacks is an error)")
    options.add_argument("--providers", nargs="+", metavar="NAME",
                         help="onnxruntime: execution providers in order of preference, e.g. CPUExecutionProvider "
                         "(default: CUDA when this onnxruntime has it, then CPU)")
    options.add_argument("--plugins", nargs="+", metavar="PATH",
                         help="tensorrt: plugin library files or folders searched before $SPECDET_TRT_PLUGINS and "
                         "the installed kernel builds; put it after the image paths")
    options.add_argument("--cuda-graphs", action="store_true", default=None,
                         help="tensorrt: capture each batch size once as a CUDA graph and replay it")
    options.add_argument("--inference-precision", choices=INFERENCE_PRECISIONS,
                         help="openvino: precision to compute in (default: f32; bf16 needs a CPU with "
                         "avx512_bf16 or AMX)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list of {path, probability, label}")
    output.add_argument("--csv", action="store_true", help="print CSV with a path,probability,label header")
    bulk = parser.add_argument_group("bulk scoring with Ray (pip install -e \".[ray]\")")
    bulk.add_argument("--ray", action="store_true",
                      help="score with a pool of Ray actors into a Parquet folder (path, probability, logit, label, "
                      "error); a rerun skips the paths already in it")
    bulk.add_argument("--out", type=Path, help="with --ray: the Parquet folder to write or resume (default: scores.parquet)")
    bulk.add_argument("--ray-address", metavar="ADDR",
                      help="with --ray: join this running Ray cluster (default: start one on 127.0.0.1)")
    bulk.add_argument("--actors", type=cli.POSITIVE, metavar="N",
                      help="with --ray: detectors running at once, one per actor (default: CPUs / --threads)")
    bulk.add_argument("--rows-per-part", type=cli.POSITIVE, metavar="N",
                      help="with --ray: rows per Parquet part file (default: 4096; a part is also written each minute): "
                      "a killed run loses at most the rows not yet in a part")
    bulk.add_argument("--list", type=Path, action="append", default=[], metavar="FILE",
                      help="read more paths from FILE, one per line (blank lines and lines starting with # skipped)")
    add_debug_flag(parser)
    return parser


# Flags that mean something only with --ray: given without it, they are an error, not ignored.
_RAY_ONLY = {"out": "--out", "ray_address": "--ray-address", "actors": "--actors", "rows_per_part": "--rows-per-part"}


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.paths and not args.list:
        parser.error("give image files or folders to score (or --list FILE)")
    if args.decode == "gpu" and (args.ray or args.workers):
        parser.error("--decode gpu decodes in this process, on the GPU: leave out --ray and --workers")
    if args.ray:
        if args.json or args.csv:
            parser.error("--ray writes Parquet (--out); --json and --csv print to the terminal: give one or the other")
        return
    for name, flag in _RAY_ONLY.items():
        if getattr(args, name) is not None:
            parser.error(f"{flag} needs --ray")


def _list_paths(lists: Sequence[Path]) -> list[Path]:
    """The paths named in ``--list`` files: one per line, blank lines and ``#`` comments skipped."""
    paths = []
    for listing in lists:
        try:
            # A FIFO would block (even its open, hence O_NONBLOCK) and /dev/zero never end: only a regular file of
            # bounded size is read.
            with os.fdopen(os.open(listing, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
                info = os.fstat(file.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise SpecdetError(f"the path list {listing} is not a regular file (a FIFO or device): give a file")
                if info.st_size > MAX_LIST_BYTES:
                    raise SpecdetError(f"the path list {listing} has {info.st_size} bytes, more than {MAX_LIST_BYTES}: "
                                       "split it")
                lines = file.read(MAX_LIST_BYTES + 1).decode("utf-8", errors="surrogateescape").splitlines()
        except OSError as err:
            raise SpecdetError(f"cannot read the path list {listing}: {err.strerror or err}") from None
        paths.extend(Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#"))
    return paths


def _predict(args: argparse.Namespace) -> int:
    if args.ray:  # before any image is looked at: without ray, say how to install it
        from specdet.runtime import ray_scoring

        ray_scoring.require_ray()
    files = collect_images([*args.paths, *_list_paths(args.list)])
    if not files:
        shown = ", ".join(str(p) for p in [*args.paths, *args.list])
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise SpecdetError(f"no images found in {shown}: give image files or folders holding {suffixes}")
    # The flags of the runner options are named after RunnerOptions' fields.
    options = RunnerOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(RunnerOptions)})
    if args.ray:
        return _predict_ray(args, files, options)
    with Detector(args.artifact, args.backend, options, max_pixels=args.max_pixels) as detector, \
            progress_bar(total=len(files), unit="image") as bar:
        results = detector.predict_files(files, args.batch_size or 8, progress=bar.update, workers=args.workers,
                                         decode_device="cuda" if args.decode == "gpu" else None)
    scored = [r for r in results if r.ok]
    for result in results:
        if not result.ok:
            print(f"skipped {printable(result.path)}: {' '.join(str(result.error).split())}", file=sys.stderr)
        elif result.frames > 1:
            print(f"note: {printable(result.path)} has {result.frames} frames; scored the first", file=sys.stderr)
    _write(scored, "json" if args.json else "csv" if args.csv else "table")
    return cli.EXIT_SKIPPED if len(scored) < len(results) else 0


def _predict_ray(args: argparse.Namespace, files: list[Path], options: RunnerOptions) -> int:
    from specdet.runtime import ray_scoring

    summary = ray_scoring.score_to_parquet(
        args.artifact, files, args.out or Path("scores.parquet"), backend=args.backend, options=options,
        max_pixels=args.max_pixels, batch_size=args.batch_size, actors=args.actors, address=args.ray_address,
        rows_per_part=args.rows_per_part or ray_scoring.ROWS_PER_PART, workers=args.workers or 0,
    )
    print(summary.line(), file=sys.stderr)
    return cli.EXIT_SKIPPED if summary.errors or summary.already_errors else 0


def printable(path: str) -> str:
    """A path as one printable line on any terminal: undecodable bytes and control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def _write(results: list[Result], form: str) -> None:
    if form == "json":
        # JSON escapes what it cannot encode (\udcxx for undecodable bytes): the path stays exact.
        rows = [{"path": r.path, "probability": r.probability, "label": r.label} for r in results]
        json.dump(rows, sys.stdout, indent=2, allow_nan=False)  # JSON has no NaN (Detector.score never gives one)
        print()
        return
    rows = [(printable(r.path), r.probability, r.label) for r in results]
    if form == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "probability", "label"])
        writer.writerows((_csv_cell(p), f"{prob:.6f}", label) for p, prob, label in rows)
    else:
        width = max([len("path")] + [len(p) for p, _, _ in rows])
        print(f"{'path':<{width}}  probability  label")
        for p, prob, label in rows:
            print(f"{p:<{width}}  {prob:>11.6f}  {label}")


if __name__ == "__main__":
    sys.exit(main())
