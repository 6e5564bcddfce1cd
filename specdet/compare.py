"""How closely a candidate's scores follow a reference's on the same images: one comparison for every caller.

The FP16 conversion (each trial against the FP32 file), ``detect-bench``'s
accuracy table, ``python -m specdet.benchmarks.fp16_agreement`` and
``detect-demo``'s parity table all ask the same question of two arrays of
probabilities (and, where they have them, logits): how far apart are they,
and do the decisions agree, each side at its own threshold? An image whose
output is not finite on either side (NaN or infinity, say an FP16 overflow)
counts as a disagreement and is left out of the differences.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from specdet.errors import SpecdetError


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Candidate against reference on ``images`` images."""

    images: int
    max_prob_diff: float | None  # largest |candidate - reference| probability; None when no image is finite
    mean_prob_diff: float | None
    max_logit_diff: float | None  # None when no logits were given (or no image is finite)
    mean_logit_diff: float | None
    decision_agreement: float  # fraction of images with the same decision (1.0 for no image)
    flipped: tuple[int, ...]  # indices of the images whose decisions differ, non-finite ones included
    nonfinite: tuple[int, ...]  # indices of the images with an output that is not finite

    @property
    def disagreements(self) -> int:
        return len(self.flipped)

    @property
    def finite(self) -> bool:
        return not self.nonfinite

    def finite_images(self) -> np.ndarray:
        """Per image: whether it counts in the differences (every output finite)."""
        mask = np.ones(self.images, dtype=bool)
        mask[list(self.nonfinite)] = False
        return mask

    def within(self, tolerance: float) -> bool:
        """Every output finite and no probability further than ``tolerance`` from the reference."""
        return self.finite and (self.max_prob_diff or 0.0) <= tolerance


def absolute_differences(reference: np.ndarray, candidate: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """``|candidate - reference|`` (probabilities or logits) in float64, on the images where ``finite`` holds."""
    return np.abs(np.asarray(candidate, np.float64)[finite] - np.asarray(reference, np.float64)[finite])


def compare(
    reference_probs: np.ndarray,
    candidate_probs: np.ndarray,
    reference_threshold: float,
    candidate_threshold: float,
    *,
    reference_logits: np.ndarray | None = None,
    candidate_logits: np.ndarray | None = None,
) -> Agreement:
    """Compare two artifacts' outputs on the same images, in the same order.

    Probabilities are fake-class probabilities; an image is called fake when
    its probability is at least the side's threshold. Logits are optional:
    without both, the logit fields are ``None``.
    """
    reference_probs, candidate_probs = np.asarray(reference_probs), np.asarray(candidate_probs)
    if reference_probs.shape != candidate_probs.shape or reference_probs.ndim != 1:
        raise SpecdetError(f"cannot compare probabilities of shapes {reference_probs.shape} and "
                           f"{candidate_probs.shape}: pass one 1-D array per side, of the same images")
    logits = reference_logits is not None and candidate_logits is not None
    finite = np.isfinite(reference_probs) & np.isfinite(candidate_probs)
    if logits:
        finite &= np.isfinite(reference_logits) & np.isfinite(candidate_logits)
    agree = ((candidate_probs >= candidate_threshold) == (reference_probs >= reference_threshold)) & finite
    prob_diff = absolute_differences(reference_probs, candidate_probs, finite)
    logit_diff = absolute_differences(reference_logits, candidate_logits, finite) if logits else np.empty(0)
    return Agreement(
        images=int(len(reference_probs)),
        max_prob_diff=_max(prob_diff),
        mean_prob_diff=_mean(prob_diff),
        max_logit_diff=_max(logit_diff),
        mean_logit_diff=_mean(logit_diff),
        decision_agreement=float(np.mean(agree)) if len(agree) else 1.0,
        flipped=tuple(int(i) for i in np.flatnonzero(~agree)),
        nonfinite=tuple(int(i) for i in np.flatnonzero(~finite)),
    )


def _max(values: np.ndarray) -> float | None:
    return float(values.max()) if values.size else None


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None
