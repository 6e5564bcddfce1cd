"""Detection metrics and threshold calibration against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from specdet.train.data import Sample
from specdet.train.evaluate import Scores, markdown, report
from specdet.train.metrics import mean_over_sources, source_metrics, threshold_at_fpr


def test_source_metrics_hand_computed():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.4, 0.6, 0.35, 0.8, 0.9]
    m = source_metrics(labels, scores, threshold=0.5)
    assert (m["reals"], m["fakes"]) == (3, 3)
    assert m["real_acc"] == pytest.approx(2 / 3) and m["fake_acc"] == pytest.approx(2 / 3)
    assert m["mean_acc"] == pytest.approx(2 / 3)
    # Ranked: F F R R F R. Precision at each fake: 1/1, 2/2, 3/5.
    assert m["ap"] == pytest.approx((1 + 1 + 3 / 5) / 3)
    # Fake-over-real pairs: 0.9 and 0.8 beat all three reals, 0.35 beats one.
    assert m["auc"] == pytest.approx(7 / 9)


def test_a_score_at_the_threshold_is_fake_as_detect_predict_labels_it():
    m = source_metrics([0, 1], [0.5, 0.5], threshold=0.5)
    assert (m["real_acc"], m["fake_acc"]) == (0.0, 1.0)


def test_source_metrics_match_scikit_learn_on_random_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    m = source_metrics(labels, scores, threshold=0.5)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores))
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["real_acc"] == pytest.approx(np.mean(scores[labels == 0] < 0.5))


def test_one_class_source_has_no_ap_and_the_mean_skips_it():
    only_fakes = source_metrics([1, 1], [0.9, 0.2], threshold=0.5)
    assert only_fakes["fake_acc"] == 0.5 and only_fakes["real_acc"] is None
    assert only_fakes["ap"] is None and only_fakes["auc"] is None and only_fakes["mean_acc"] is None
    both = source_metrics([0, 1], [0.2, 0.9], threshold=0.5)
    mean = mean_over_sources({"a": both, "b": only_fakes})
    assert mean["ap"] == 1.0 and mean["fake_acc"] == pytest.approx(0.75) and mean["real_acc"] == 1.0


@pytest.mark.parametrize("fpr, allowed", [(0.0, 0), (0.05, 5), (0.29, 29), (0.5, 50)])
def test_threshold_at_fpr_allows_exactly_floor_fpr_n_false_positives(fpr, allowed):
    reals = np.random.default_rng(1).random(100).astype(np.float32)
    threshold = threshold_at_fpr(reals, fpr)
    assert int(np.sum(reals >= threshold)) == allowed
    # The lowest such threshold: the next real below it would be a false positive at its own score.
    assert threshold == np.nextafter(np.sort(reals)[::-1][allowed], np.float32(1))


def test_threshold_at_fpr_with_ties_stays_at_or_below_the_rate():
    reals = np.array([0.9, 0.9, 0.9, 0.1], dtype=np.float32)
    threshold = threshold_at_fpr(reals, 0.5)  # two allowed, but three tie at 0.9: none can be
    assert np.sum(reals >= threshold) == 0
    assert threshold_at_fpr(reals, 1.0) == 0.0
    with pytest.raises(ValueError):
        threshold_at_fpr([], 0.05)


def test_report_and_markdown_per_source_with_mean():
    samples = [Sample(f"{s}/{i}.jpg", i % 2, s) for s in ("gan", "diffusion") for i in range(4)]
    scores = Scores(samples, [0.1, 0.9, 0.2, 0.8, 0.6, 0.7, 0.1, 0.4], [("bad.jpg", "unreadable")])
    result = report(scores, threshold=0.5)
    assert list(result["sources"]) == ["diffusion", "gan"]
    assert result["sources"]["gan"]["ap"] == 1.0 and result["sources"]["diffusion"]["real_acc"] == 0.5
    assert result["mean"]["real_acc"] == pytest.approx(0.75)
    table = markdown(result, "Test")
    assert "| gan | 2 | 2 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in table
    assert "| **mean** |" in table and "1 unreadable image(s) left out." in table
