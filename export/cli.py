"""``detect-export``: a checkpoint to a validated ONNX file and its manifest."""

from __future__ import annotations

import argparse
import sys

from specdet import cli
from specdet.export.artifact import export_checkpoint
from specdet.export.onnx import AUTO_FFT, DEFAULT_OPSET, FFT_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detect-export",
        description="Export a detector checkpoint to ONNX (dynamic batch), validate it against PyTorch "
        "in ONNX Runtime and write a manifest (model.json) beside it.",
    )
    parser.add_argument("checkpoint", help="a .pth written by specdet (or a plain state dict with --arch)")
    parser.add_argument("-o", "--output", help="ONNX file to write (default: the checkpoint's name with .onnx)")
    parser.add_argument("--arch", help="architecture of a plain state dict (see specdet.models.list_models())")
    parser.add_argument(
        "--fft", default="auto", choices=["auto", *FFT_MODES],
        help=f"how FFTs are written in ONNX: dft (ONNX DFT nodes), matmul (DFT as constant matrices), "
        f"plugin (specdet-domain ops with a matmul fallback body); auto = {AUTO_FFT}",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch the file accepts (default 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_debug_flag(parser)
    return parser


def _export(args: argparse.Namespace) -> int:
    if args.max_batch < 1:
        raise cli.SpecdetError(f"--max-batch must be at least 1, got {args.max_batch}")
    result = export_checkpoint(
        args.checkpoint, args.output, arch=args.arch, fft=args.fft, opset=args.opset,
        max_batch=args.max_batch, progress=not args.quiet and sys.stderr.isatty(),
    )
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, fft={result.fft}, opset {result.opset}, "
          f"batch 1..{result.max_batch}) in {result.seconds:.1f} s")
    print(f"validated against PyTorch at batch sizes {result.validation.batch_sizes}:")
    print("\n".join(result.validation.lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(_export, args)


if __name__ == "__main__":
    sys.exit(main())
