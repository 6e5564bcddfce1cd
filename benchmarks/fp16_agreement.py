"""Does an FP16 artifact score images like its FP32 parent? Decision agreement and largest probability difference.

Both artifacts run through :class:`specdet.runtime.Detector` (each with the
preprocessing and threshold of its own manifest) on every image of a folder;
the report (:func:`specdet.compare.compare`) gives the decision agreement,
each side at its own threshold, the largest and mean absolute probability
differences, the images whose decisions differ or whose outputs are not
finite, and per-source numbers for CNNDetection-style folders
(``<source>/0_real|1_fake/...``).

    python -m specdet.benchmarks.fp16_agreement model.onnx model-fp16.onnx ../shared/data/cnndetection-thumbs \
        --out result.json

Works for any two artifacts of one model (``.pth``, ``.onnx``, ``.engine``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from specdet import cli
from specdet.compare import compare as compare_scores
from specdet.errors import SpecdetError
from specdet.images import folder_images
from specdet.runtime import Detector
from specdet.versions import library_versions


def compare(reference: str, candidate: str, folder: str, *, batch_size: int = 8, limit: int | None = None) -> dict:
    files = folder_images(folder)
    if limit is not None and limit < len(files):
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    with Detector(reference) as ref_detector, Detector(candidate) as new_detector:
        ref = ref_detector.predict_files(files, batch_size=batch_size)
        new = new_detector.predict_files(files, batch_size=batch_size)
    kept = [(f, a.probability, b.probability) for f, a, b in zip(files, ref, new) if a.ok and b.ok]
    if not kept:
        raise SpecdetError("no image could be scored by both artifacts")
    p_ref = np.array([k[1] for k in kept], dtype=np.float64)
    p_new = np.array([k[2] for k in kept], dtype=np.float64)
    threshold, candidate_threshold = ref_detector.threshold, new_detector.threshold
    overall = compare_scores(p_ref, p_new, threshold, candidate_threshold)
    root = Path(folder)
    sources: dict[str, list[int]] = {}
    for i, (path, _, _) in enumerate(kept):
        parts = path.relative_to(root).parts
        sources.setdefault(parts[0] if len(parts) > 2 else ".", []).append(i)
    per_source = {name: compare_scores(p_ref[idx], p_new[idx], threshold, candidate_threshold)
                  for name, idx in sorted(sources.items())}
    return {
        "reference": str(reference),
        "candidate": str(candidate),
        "folder": str(folder),
        "images": len(kept),
        "skipped": len(files) - len(kept),
        "threshold": threshold,
        "candidate_threshold": candidate_threshold,
        "decision_agreement": overall.decision_agreement,
        "disagreements": [str(kept[i][0]) for i in overall.flipped],
        "max_prob_diff": overall.max_prob_diff,
        "mean_prob_diff": overall.mean_prob_diff,
        "nonfinite": [str(kept[i][0]) for i in overall.nonfinite],
        "reference_prob_range": [float(p_ref.min()), float(p_ref.max())],
        "fake_rate_reference": float((p_ref >= threshold).mean()),
        "per_source": {
            name: {"images": a.images, "decision_agreement": a.decision_agreement, "max_prob_diff": a.max_prob_diff}
            for name, a in per_source.items()
        },
        "versions": library_versions(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m specdet.benchmarks.fp16_agreement", description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="the FP32 artifact")
    parser.add_argument("candidate", help="the artifact to judge (FP16 ONNX or engine)")
    parser.add_argument("folder", help="images (searched recursively)")
    parser.add_argument("--batch-size", type=cli.BATCH, default=8)
    parser.add_argument("--limit", type=cli.POSITIVE, help="at most this many images, spread over the folder")
    parser.add_argument("--out", help="write the result as JSON here")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)

    def run(args: argparse.Namespace) -> int:
        result = compare(args.reference, args.candidate, args.folder, batch_size=args.batch_size, limit=args.limit)
        differences = ("none (no finite output)" if result["max_prob_diff"] is None else
                       f"{result['max_prob_diff']:.2e} (mean {result['mean_prob_diff']:.2e})")
        nonfinite = f", {len(result['nonfinite'])} not finite" if result["nonfinite"] else ""
        print(f"{result['images']} images: decision agreement {100 * result['decision_agreement']:.2f}% at threshold "
              f"{result['threshold']:.4g}, largest probability difference {differences}{nonfinite}; reference "
              f"probabilities {result['reference_prob_range'][0]:.3f}..{result['reference_prob_range'][1]:.3f}, "
              f"{100 * result['fake_rate_reference']:.1f}% called fake")
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0

    return cli.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
