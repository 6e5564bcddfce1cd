"""``detect-import``: a published detector's released head file and a local CLIP tower to a specdet checkpoint."""

from __future__ import annotations

import argparse
import sys

from specdet import cli
from specdet.models.import_published import PUBLISHED, import_published


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="detect-import",
        description="Import a published detector (its released head file) on a local CLIP ViT-L/14 tower into a "
        "specdet checkpoint, which detect-export, detect-predict and the rest then take as any other. "
        + " ".join(f"{kind}: {p.name}, {p.code} ({p.licence}), head files {p.head_files}."
                   for kind, p in PUBLISHED.items()),
    )
    parser.add_argument("model", choices=sorted(PUBLISHED), help="which published detector the head file is")
    parser.add_argument("head", help="the released head file (.pth), read as tensors only (weights_only)")
    parser.add_argument(
        "--clip", required=True,
        help="CLIP ViT-L/14: a local Hugging Face folder of openai/clip-vit-large-patch14 (config.json and "
        "model.safetensors or pytorch_model.bin), or a state dict of OpenAI's ViT-L-14.pt (visual.* names)",
    )
    parser.add_argument("-o", "--output", required=True, help="the checkpoint to write (.pth)")
    parser.add_argument("--arch", help="the registry variant to build (default: the published size; the tiny "
                        "variants are for tests)")
    cli.add_debug_flag(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    path, arch, config = import_published(args.model, args.head, args.clip, args.output, arch=args.arch)
    shown = ", ".join(f"{k} {v}" for k, v in config.items())
    print(f"wrote {path}: {arch}{f' ({shown})' if shown else ''}, {PUBLISHED[args.model].name} head {args.head} "
          f"on the CLIP at {args.clip}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(_run, args)


if __name__ == "__main__":
    sys.exit(main())
