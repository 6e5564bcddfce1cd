"""Accuracy of a variant against the PyTorch FP32 reference on the same preprocessed images.

Figures per variant: largest and mean absolute difference of logits and of
probabilities; agreement of decisions (each side at its own manifest
threshold); a histogram of the probability differences; and, on labelled
images, AUC and AP per source and their mean over sources (the field's
metrics, ``specdet.train.metrics``), each with its difference from the
reference's. Outputs that are not finite (NaN or infinity, say an FP16
overflow) are counted, and count as disagreements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from specdet.compare import absolute_differences, compare
from specdet.runtime import Runner

# Probability-difference histogram: decades from 1e-10 to 1, two bins each; exact zeros apart.
HISTOGRAM_EDGES = [10.0 ** (e / 2) for e in range(-20, 1)]


@dataclasses.dataclass
class Outputs:
    logit: np.ndarray
    probability: np.ndarray


def score(
    runner: Runner, pixels: np.ndarray, batch: int, progress: Callable[[int], None] | None = None
) -> Outputs:
    """``runner`` on ``pixels`` in batches of ``batch``: every image's logit and probability."""
    dtype = np.dtype(runner.input_spec().dtype)
    logits, probabilities = [], []
    for start in range(0, len(pixels), batch):
        out = runner.infer(np.ascontiguousarray(pixels[start : start + batch], dtype=dtype))
        logits.append(out["logit"])
        probabilities.append(out["probability"])
        if progress is not None:
            progress(1)
    return Outputs(np.concatenate(logits), np.concatenate(probabilities))


def differences(reference: Outputs, candidate: Outputs, reference_threshold: float, threshold: float) -> dict:
    """Absolute differences of logits and probabilities, and agreement of decisions (:func:`specdet.compare.compare`)."""
    agreement = compare(reference.probability, candidate.probability, reference_threshold, threshold,
                        reference_logits=reference.logit, candidate_logits=candidate.logit)
    prob_diff = absolute_differences(reference.probability, candidate.probability, agreement.finite_images())
    return {
        "images": agreement.images,
        "threshold": float(threshold),
        "logit_max_abs": agreement.max_logit_diff,
        "logit_mean_abs": agreement.mean_logit_diff,
        "probability_max_abs": agreement.max_prob_diff,
        "probability_mean_abs": agreement.mean_prob_diff,
        "decision_agreement": agreement.decision_agreement,
        "disagreements": agreement.disagreements,
        "nonfinite_outputs": len(agreement.nonfinite),
        "probability_diff_histogram": histogram(prob_diff),
    }


def histogram(diffs: np.ndarray) -> dict:
    """Counts of absolute differences in :data:`HISTOGRAM_EDGES` bins (below the first edge in the first)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    nonzero = diffs[diffs > 0]
    clipped = np.clip(nonzero, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1])
    counts, _ = np.histogram(clipped, bins=HISTOGRAM_EDGES)
    return {"edges": HISTOGRAM_EDGES, "counts": counts.tolist(), "zeros": int(np.sum(diffs == 0))}


def detection(probability: np.ndarray, labels: Sequence[int], sources: Sequence[str], threshold: float) -> dict:
    """AUC, AP and accuracies per source, and their mean over sources."""
    from specdet.train.metrics import mean_over_sources, source_metrics

    labels = np.asarray(labels)
    sources = np.asarray(sources)
    per_source = {}
    for source in sorted(set(sources.tolist())):
        mask = sources == source
        scores = probability[mask].astype(np.float64)
        metrics = source_metrics(labels[mask], np.nan_to_num(scores), threshold)
        if not np.all(np.isfinite(scores)):  # no AUC or AP from scores that are not numbers
            metrics.update({key: None for key in ("real_acc", "fake_acc", "mean_acc", "ap", "auc")})
        per_source[source] = metrics
    return {"mean": mean_over_sources(per_source), "per_source": per_source}


def detection_with_differences(metrics: dict, reference: dict) -> dict:
    """``metrics`` (from :func:`detection`) with ``auc_diff`` and ``ap_diff`` against ``reference``'s."""

    def diff(mine: dict, theirs: dict) -> dict:
        out = dict(mine)
        for key in ("auc", "ap"):
            a, b = mine.get(key), theirs.get(key)
            out[f"{key}_diff"] = None if a is None or b is None else a - b
        return out

    return {
        "mean": diff(metrics["mean"], reference["mean"]),
        "per_source": {s: diff(m, reference["per_source"].get(s, {})) for s, m in metrics["per_source"].items()},
    }
