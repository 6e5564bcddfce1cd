"""``detect-demo``: the whole pipeline on a built-in default, with nothing to download.

For each tiny detector (random weights, fixed seed): save a checkpoint,
export it in every FFT mode, score the sample photos that scikit-image ships
with the PyTorch checkpoint and with each ONNX file, and print a parity table
(largest probability difference, decision agreement). The tiny models are
untrained, so their scores mean nothing as detection; the demo shows that the
exported files score images the way PyTorch does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specdet import cli
from specdet.compare import compare
from specdet.export.artifact import export_checkpoint
from specdet.export.onnx import FFT_MODES
from specdet.images import SAMPLE_PHOTOS, sample_photos
from specdet.models import checkpoint, create_model
from specdet.runtime import Detector

DEMO_MODELS = ("dual_branch_tiny", "rine_ssca_tiny")


def _score(detector: Detector, images: list[np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    probabilities = detector.predict(images, batch_size=8)
    return probabilities, (time.perf_counter() - start) / len(images)


def run_demo(out: Path, *, fft_modes: tuple[str, ...] = FFT_MODES, models: tuple[str, ...] = DEMO_MODELS) -> list[dict]:
    """Export and compare; returns one row per (model, fft mode)."""
    photos = sample_photos()
    images = [image for _, image in photos]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in models:
        torch.manual_seed(0)
        pth = checkpoint.save(create_model(arch), out / f"{arch}.pth", source="detect-demo (random init)")
        with Detector(pth) as detector:
            reference, torch_seconds = _score(detector, images)
        for fft in fft_modes:
            print(f"exporting {arch} with --fft {fft} ...", file=sys.stderr, flush=True)
            result = export_checkpoint(pth, out / f"{arch}-{fft}.onnx", fft=fft, progress=False)
            with Detector(result.path) as onnx_detector:
                scores, onnx_seconds = _score(onnx_detector, images)
            agreement = compare(reference, scores, detector.threshold, onnx_detector.threshold)
            rows.append({
                "model": arch,
                "fft": fft,
                "onnx": result.path.name,
                "size_mb": result.size_bytes / 1e6,
                # A file with outputs that are not numbers is as far from PyTorch as can be.
                "max_abs_diff": agreement.max_prob_diff if agreement.finite else float("inf"),
                "agreement": agreement.decision_agreement,
                "torch_ms": torch_seconds * 1e3,
                "onnx_ms": onnx_seconds * 1e3,
            })
    return rows


def format_table(rows: list[dict], n_images: int) -> str:
    lines = [
        f"Parity of ONNX Runtime against the PyTorch checkpoint on {n_images} scikit-image sample photos",
        "",
        "| model | fft | ONNX file | MB | max abs diff (prob) | decisions agree | torch ms/img | onnxruntime ms/img |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['fft']} | {r['onnx']} | {r['size_mb']:.1f} | {r['max_abs_diff']:.2e} "
            f"| {r['agreement']:.0%} | {r['torch_ms']:.1f} | {r['onnx_ms']:.1f} |"
        )
    lines.append("")
    lines.append("(ms/img: one pass over the photos in batches of 8, preprocessing included; a demo, not a benchmark)")
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    rows = run_demo(Path(args.out), fft_modes=tuple(args.fft))
    print(format_table(rows, len(SAMPLE_PHOTOS)))
    worst = max(r["max_abs_diff"] for r in rows)
    if worst > 1e-4:
        print(f"parity FAILED: largest difference {worst:.2e} > 1e-4", file=sys.stderr)
        return 1
    print(f"parity OK: every ONNX file within {worst:.1e} of PyTorch (tolerance 1e-4); artifacts in {args.out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="detect-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-out", help="folder for the checkpoints and ONNX files (default demo-out)")
    parser.add_argument("--fft", nargs="+", choices=FFT_MODES, default=list(FFT_MODES), help="FFT modes to export")
    cli.add_debug_flag(parser)
    return cli.run(_demo, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
