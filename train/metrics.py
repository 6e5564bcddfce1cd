"""Detection metrics as the field reports them, and threshold calibration.

Per source (CNNDetection, Wang et al. 2020; RINE): accuracy on reals,
accuracy on fakes, their mean, average precision and ROC AUC; then the mean
of each over sources. Scores are probabilities (fake = 1) and an image is
called fake when its score is at or above the threshold, as ``detect-predict``
labels it. AP and AUC are scikit-learn's, which CNNDetection uses; they are
None for a source that lacks one of the two classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

METRICS = ("real_acc", "fake_acc", "mean_acc", "ap", "auc")


def source_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, float | int | None]:
    """The metrics of one source; accuracies, AP and AUC are fractions in [0, 1]."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    real, fake = scores[labels == 0], scores[labels == 1]
    real_acc = float(np.mean(real < threshold)) if real.size else None
    fake_acc = float(np.mean(fake >= threshold)) if fake.size else None
    both = real.size > 0 and fake.size > 0
    return {
        "reals": int(real.size),
        "fakes": int(fake.size),
        "real_acc": real_acc,
        "fake_acc": fake_acc,
        "mean_acc": (real_acc + fake_acc) / 2 if both else None,
        "ap": float(average_precision_score(labels, scores)) if both else None,
        "auc": float(roc_auc_score(labels, scores)) if both else None,
    }


def mean_over_sources(per_source: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """Each metric averaged over the sources that have it."""
    means = {}
    for name in METRICS:
        values = [m[name] for m in per_source.values() if m[name] is not None]
        means[name] = float(np.mean(values)) if values else None
    return means


def threshold_at_fpr(real_scores: Sequence[float], fpr: float) -> float:
    """The lowest threshold at which at most ``fpr`` of ``real_scores`` are called fake.

    With the reals sorted high to low and ``k = floor(fpr * n)`` false positives
    allowed, the threshold is the next float32 above the (k+1)-th highest
    real score: that real and every lower one fall below it, so at most ``k``
    reals reach it. Scores are float32 probabilities, as every runtime
    returns them, so the comparison is exact there too.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"false-positive rate must be in [0, 1], got {fpr}")
    scores = np.sort(np.asarray(real_scores, dtype=np.float32))[::-1]
    if scores.size == 0:
        raise ValueError("threshold calibration needs at least one real image")
    # 1e-9: products such as 0.29 * 100 = 28.999999999999996 must floor to 29.
    allowed = math.floor(fpr * scores.size + 1e-9)
    if allowed >= scores.size:
        return 0.0
    # At most 1: a threshold is a probability. When that real scores exactly 1 (a saturated model) no
    # threshold reaches the rate; 1 then calls fake only the scores of exactly 1.
    return min(float(np.nextafter(scores[allowed], np.float32(np.inf))), 1.0)
