"""``detect-export``: a checkpoint to a validated ONNX file and its manifest."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnx

from specdet import cli
from specdet.export.artifact import convert_to_fp16, convert_to_int8, export_checkpoint
from specdet.export.onnx import AUTO_FFT, DEFAULT_OPSET, FFT_MODES, MIN_OPSET
from specdet.export.precision import int8
from specdet.manifest import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="detect-export",
        description="Export a detector checkpoint to ONNX (dynamic batch), validate it against PyTorch "
        "in ONNX Runtime, and embed its manifest in the file (ONNX metadata specdet.manifest).",
    )
    parser.add_argument(
        "checkpoint",
        help="a .pth written by specdet (or a plain state dict with --arch); with --precision fp16 or int8 also "
        "an exported FP32 .onnx with its manifest, converted without re-exporting",
    )
    parser.add_argument(
        "-o", "--output",
        help="ONNX file to write (default: the checkpoint's name with .onnx; NAME-fp16.onnx or NAME-int8.onnx with "
        "--precision fp16 or int8)",
    )
    parser.add_argument("--arch", help="architecture of a plain state dict (see specdet.models.list_models())")
    parser.add_argument(
        "--fft", default="auto", choices=["auto", *FFT_MODES],
        help=f"how FFTs are written in ONNX: dft (ONNX DFT nodes), matmul (DFT as constant matrices), "
        f"plugin (specdet-domain ops with a matmul fallback body); auto = {AUTO_FFT}",
    )
    parser.add_argument("--opset", type=cli.int_range(MIN_OPSET, onnx.defs.onnx_opset_version()),
                        default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--max-batch", type=cli.BATCH, default=32, help="largest batch the file accepts (default 32)")
    fp16 = parser.add_argument_group("precision")
    fp16.add_argument(
        "--precision", default="fp32", choices=PRECISIONS,
        help="fp16: mixed-precision file for strongly typed TensorRT (FP16 tensors, FP32 inputs, outputs and "
        "measured FP32 islands); needs specdet[fp16]. int8: QDQ file (INT8 weights and activations, static "
        "calibration) for ONNX Runtime, OpenVINO and TensorRT, with measured FP32 islands",
    )
    fp16.add_argument(
        "--calibration", metavar="DIR",
        help="images the FP16 or INT8 error is measured on, and INT8 activation ranges calibrated on "
        "(default: scikit-image's sample photos)",
    )
    fp16.add_argument("--calibration-count", type=cli.int_range(1, 100_000), default=32, metavar="N",
                      help="images taken from --calibration, spread over the folder (default 32)")
    fp16.add_argument("--fp16-tolerance", type=cli.number_range(0.0, 1.0, above=True), metavar="P",
                      help="largest probability difference from FP32 an op group may leave when it goes FP16 "
                      "(default 0.005)")
    fp16.add_argument("--int8-tolerance", type=cli.number_range(0.0, 1.0, above=True), metavar="P",
                      help="largest probability difference from FP32 the INT8 file may leave on the calibration "
                      f"images; op groups go INT8 only within it (default {int8.DEFAULT_TOLERANCE})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_debug_flag(parser)
    return parser


def _export(args: argparse.Namespace) -> int:
    if args.max_batch < 1:
        raise cli.SpecdetError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.calibration_count < 1:
        raise cli.SpecdetError(f"--calibration-count must be at least 1, got {args.calibration_count}")
    progress = not args.quiet and sys.stderr.isatty()
    if Path(args.checkpoint).suffix.lower() == ".onnx":
        if args.precision == "fp32":
            raise cli.SpecdetError(f"{args.checkpoint} is already ONNX: pass --precision fp16 or int8 to convert "
                                   "it, or export a checkpoint")
        start = time.perf_counter()
        convert, tolerance = ((convert_to_fp16, args.fp16_tolerance) if args.precision == "fp16"
                              else (convert_to_int8, args.int8_tolerance))
        report = convert(args.checkpoint, args.output, calibration=args.calibration, count=args.calibration_count,
                         tolerance=tolerance, progress=progress)
        stem = Path(args.checkpoint).stem
        output = args.output or str(Path(args.checkpoint).with_name(f"{stem}-{args.precision}.onnx"))
        print(f"wrote {output} ({Path(output).stat().st_size / 1e6:.1f} MB, {args.precision}) in "
              f"{time.perf_counter() - start:.1f} s")
        print("\n".join(report.lines()))
        return 0
    result = export_checkpoint(
        args.checkpoint, args.output, arch=args.arch, fft=args.fft, opset=args.opset,
        max_batch=args.max_batch, precision=args.precision, calibration=args.calibration,
        calibration_count=args.calibration_count, fp16_tolerance=args.fp16_tolerance,
        int8_tolerance=args.int8_tolerance, progress=progress,
    )
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.stages.items())
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, fft={result.fft}, opset {result.opset}, "
          f"batch 1..{result.max_batch}{', ' + args.precision if result.precision is not None else ''}) in "
          f"{result.seconds:.1f} s"
          + (f" ({stages})" if stages else ""))
    print(f"validated against PyTorch at batch sizes {result.validation.batch_sizes}"
          f"{' (the FP32 export, before conversion)' if result.precision is not None else ''}:")
    print("\n".join(result.validation.lines()))
    if result.precision is not None:
        print("\n".join(result.precision.lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(_export, args)


if __name__ == "__main__":
    sys.exit(main())
