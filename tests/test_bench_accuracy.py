"""detect-bench's accuracy figures: differences from the reference, agreement, AUC/AP against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from specdet.benchmarks import accuracy

REFERENCE = accuracy.Outputs(
    logit=np.array([-2.0, -0.5, 0.1, 3.0], dtype=np.float32),
    probability=np.array([0.1, 0.4, 0.52, 0.95], dtype=np.float32),
)


def test_differences_by_hand():
    candidate = accuracy.Outputs(
        logit=np.array([-2.0, -0.25, 0.0, 3.5], dtype=np.float32),
        probability=np.array([0.1, 0.45, 0.49, 0.95], dtype=np.float32),
    )
    d = accuracy.differences(REFERENCE, candidate, 0.5, 0.5)
    assert d["images"] == 4 and d["threshold"] == 0.5
    assert d["logit_max_abs"] == pytest.approx(0.5)
    assert d["logit_mean_abs"] == pytest.approx((0 + 0.25 + 0.1 + 0.5) / 4, rel=1e-6)
    assert d["probability_max_abs"] == pytest.approx(0.05, rel=1e-5)
    assert d["probability_mean_abs"] == pytest.approx((0 + 0.05 + 0.03 + 0) / 4, rel=1e-5)
    # 0.52 -> 0.49 crosses the threshold: one decision of four differs
    assert d["decision_agreement"] == 0.75 and d["disagreements"] == 1 and d["nonfinite_outputs"] == 0
    hist = d["probability_diff_histogram"]
    assert hist["zeros"] == 2 and sum(hist["counts"]) == 2
    assert len(hist["counts"]) == len(hist["edges"]) - 1


def test_identical_outputs_agree_fully():
    d = accuracy.differences(REFERENCE, REFERENCE, 0.5, 0.5)
    assert d["logit_max_abs"] == 0.0 and d["probability_mean_abs"] == 0.0
    assert d["decision_agreement"] == 1.0 and d["probability_diff_histogram"]["zeros"] == 4


def test_nonfinite_outputs_count_as_disagreements():
    candidate = accuracy.Outputs(
        logit=np.array([-2.0, np.nan, 0.1, 3.0], dtype=np.float32),
        probability=np.array([0.1, np.nan, 0.52, 0.95], dtype=np.float32),
    )
    d = accuracy.differences(REFERENCE, candidate, 0.5, 0.5)
    assert d["nonfinite_outputs"] == 1 and d["disagreements"] == 1
    assert d["logit_max_abs"] == 0.0  # over the finite outputs


def test_histogram_bins():
    h = accuracy.histogram(np.array([0.0, 1e-12, 2e-7, 0.5, 1.0]))
    assert h["zeros"] == 1
    edges = np.array(h["edges"])
    counts = np.array(h["counts"])
    assert counts[0] == 1  # 1e-12, below the first edge, lands in the first bin
    assert counts[np.searchsorted(edges, 2e-7) - 1] == 1
    assert counts[-1] == 2  # 0.5 and 1.0


def test_detection_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 12)
    sources = np.array(["a"] * 8 + ["b"] * 16)
    reference = rng.random(24).astype(np.float32)
    candidate = np.clip(reference + rng.normal(0, 0.05, 24), 0, 1).astype(np.float32)
    ref = accuracy.detection(reference, labels, sources, 0.5)
    mine = accuracy.detection(candidate, labels, sources, 0.5)
    for source in ("a", "b"):
        m = sources == source
        assert ref["per_source"][source]["auc"] == pytest.approx(roc_auc_score(labels[m], reference[m]))
        assert ref["per_source"][source]["ap"] == pytest.approx(average_precision_score(labels[m], reference[m]))
    assert ref["mean"]["auc"] == pytest.approx(np.mean([ref["per_source"][s]["auc"] for s in ("a", "b")]))
    both = accuracy.detection_with_differences(mine, ref)
    for source in ("a", "b"):
        m = sources == source
        expected = roc_auc_score(labels[m], candidate[m]) - roc_auc_score(labels[m], reference[m])
        assert both["per_source"][source]["auc_diff"] == pytest.approx(expected)
    assert both["mean"]["ap_diff"] == pytest.approx(mine["mean"]["ap"] - ref["mean"]["ap"])
    same = accuracy.detection_with_differences(ref, ref)
    assert same["mean"]["auc_diff"] == 0.0 and same["mean"]["ap_diff"] == 0.0


def test_detection_without_one_class_has_no_auc():
    metrics = accuracy.detection(np.array([0.2, 0.7]), [0, 0], ["only", "only"], 0.5)
    assert metrics["per_source"]["only"]["auc"] is None and metrics["mean"]["auc"] is None
    diff = accuracy.detection_with_differences(metrics, metrics)
    assert diff["mean"]["auc_diff"] is None
