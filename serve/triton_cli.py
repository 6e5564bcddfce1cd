"""``detect-triton ARTIFACT... -o REPO``: write a Triton model repository serving specdet artifacts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from specdet import cli
from specdet.cli import add_debug_flag, run
from specdet.serve.repository import DEFAULT_NAME, DETECTORS, Options, add_batching_arguments, write_repository


def main(argv: Sequence[str] | None = None) -> int:
    return run(_write, _parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="detect-triton",
        description="Write a Triton model repository: per artifact an ensemble (encoded image bytes in; "
        "probability, logit, label out) of a preprocess, a detector and a postprocess model.",
    )
    parser.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT",
                        help="exported model.onnx or built model.engine/.plan (with its .json)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="REPO", help="the repository folder")
    parser.add_argument("--detector", choices=sorted(DETECTORS),
                        help="the detector model: onnxruntime (platform onnxruntime_onnx), tensorrt (tensorrt_plan) or "
                        "python (specdet's own runtime, for servers without those backends); default: onnxruntime "
                        "for .onnx, tensorrt for engines")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help=f"the ensemble's name with one artifact; with several, each is NAME_<file stem> "
                        f"(default: {DEFAULT_NAME})")
    add_batching_arguments(parser)
    parser.add_argument("--gpu", action="store_true",
                        help="run the onnxruntime or python detector on the GPU (KIND_GPU; tensorrt always is)")
    parser.add_argument("--tensorrt-fp16", action="store_true",
                        help="onnxruntime detector on --gpu: ONNX Runtime's TensorRT accelerator in FP16")
    parser.add_argument("--force", action="store_true", help="replace REPO if it exists and is not empty")
    add_debug_flag(parser)
    return parser


def _write(args: argparse.Namespace) -> int:
    options = Options(detector=args.detector, name=args.name, instances=args.instances,
                      preprocess_instances=args.preprocess_instances, gpu=args.gpu,
                      max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, tensorrt_fp16=args.tensorrt_fp16)
    output = write_repository(args.artifacts, args.output, options, force=args.force)
    print(f"wrote {output} ({len(args.artifacts)} model{'s' if len(args.artifacts) > 1 else ''}): "
          f"tritonserver --model-repository {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
