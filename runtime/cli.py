"""``detect-predict ARTIFACT PATH...``: score image files and folders with a detector."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from specdet import cli
from specdet.cli import add_debug_flag, run
from specdet.errors import SpecdetError
from specdet.images import IMAGE_SUFFIXES, collect_images
from specdet.limits import MAX_PIXELS, MAX_PIXELS_CEILING
from specdet.progress import bar as progress_bar
from specdet.runtime.base import BACKENDS
from specdet.runtime.detector import Detector, Result

# Exit status when some files were skipped (unreadable or missing) and the rest scored.



def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(_predict, args)
    except BrokenPipeError:
        # The reader (say `| head`) stopped early: not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="detect-predict",
        description="Print the probability that each image is generated (fake) and its label.",
    )
    parser.add_argument("artifact", type=Path, help="model.pth checkpoint, exported model.onnx or built model.engine")
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (searched recursively)"
    )
    parser.add_argument("--backend", choices=sorted(BACKENDS), help="default: chosen by the artifact's suffix")
    parser.add_argument("--arch", help="architecture of a bare state dict (a checkpoint names its own)")
    parser.add_argument("--batch-size", type=cli.BATCH, default=8, help="images per inference call (default: 8)")
    parser.add_argument("--threads", type=cli.THREADS, help="CPU threads for inference (default: the backend's)")
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
    options.add_argument("--inference-precision", choices=("f32", "bf16"), dest="precision",
                         help="openvino: precision to compute in (default: f32; bf16 needs a CPU with "
                         "avx512_bf16 or AMX)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list of {path, probability, label}")
    output.add_argument("--csv", action="store_true", help="print CSV with a path,probability,label header")
    add_debug_flag(parser)
    return parser


def _predict(args: argparse.Namespace) -> int:
    files = collect_images(args.paths)
    if not files:
        shown = ", ".join(str(p) for p in args.paths)
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise SpecdetError(f"no images found in {shown}: give image files or folders holding {suffixes}")
    with Detector(args.artifact, args.backend, arch=args.arch, threads=args.threads, providers=args.providers,
                  plugins=args.plugins, cuda_graphs=args.cuda_graphs, precision=args.precision,
                  max_pixels=args.max_pixels) as detector, \
            progress_bar(total=len(files), unit="image") as bar:
        results = detector.predict_files(files, args.batch_size, progress=bar.update)
    scored = [r for r in results if r.ok]
    for result in results:
        if not result.ok:
            print(f"skipped {printable(result.path)}: {' '.join(str(result.error).split())}", file=sys.stderr)
        elif result.frames > 1:
            print(f"note: {printable(result.path)} has {result.frames} frames; scored the first", file=sys.stderr)
    _write(scored, "json" if args.json else "csv" if args.csv else "table")
    return cli.EXIT_SKIPPED if len(scored) < len(results) else 0


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
        json.dump(rows, sys.stdout, indent=2)
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
