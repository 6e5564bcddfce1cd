"""specdet.compare: the one comparison of two artifacts' scores, by hand."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from specdet.compare import absolute_differences, compare
from specdet.errors import SpecdetError

REFERENCE = np.array([0.1, 0.4, 0.52, 0.95])
REFERENCE_LOGITS = np.array([-2.0, -0.5, 0.1, 3.0])


def test_differences_and_decisions_by_hand():
    a = compare(REFERENCE, np.array([0.1, 0.45, 0.49, 0.95], np.float32), 0.5, 0.5,
                reference_logits=REFERENCE_LOGITS, candidate_logits=np.array([-2.0, -0.25, 0.0, 3.5]))
    assert a.images == 4
    assert a.max_prob_diff == pytest.approx(0.05, rel=1e-6)
    assert a.mean_prob_diff == pytest.approx((0 + 0.05 + 0.03 + 0) / 4, rel=1e-6)
    assert a.max_logit_diff == pytest.approx(0.5) and a.mean_logit_diff == pytest.approx(0.85 / 4)
    # 0.52 -> 0.49 crosses the threshold: image 2's decision flips
    assert a.flipped == (2,) and a.disagreements == 1 and a.decision_agreement == 0.75
    assert a.finite and a.nonfinite == () and a.within(0.05) and not a.within(0.04)


def test_each_side_at_its_own_threshold():
    same = REFERENCE.copy()
    assert compare(REFERENCE, same, 0.5, 0.5).decision_agreement == 1.0
    # At 0.3 the candidate calls image 1 (0.4) fake; the reference at 0.5 does not.
    a = compare(REFERENCE, same, 0.5, 0.3)
    assert a.flipped == (1,) and a.max_prob_diff == 0.0


def test_without_logits_the_logit_fields_are_none():
    a = compare(REFERENCE, REFERENCE, 0.5, 0.5)
    assert a.max_logit_diff is None and a.mean_logit_diff is None
    assert a.max_prob_diff == 0.0 and a.decision_agreement == 1.0


def test_nonfinite_outputs_disagree_and_stay_out_of_the_differences():
    candidate = np.array([0.1, np.nan, 0.52, 0.95])
    logits = np.array([-2.0, -0.5, np.inf, 3.0])
    a = compare(REFERENCE, candidate, 0.5, 0.5, reference_logits=REFERENCE_LOGITS, candidate_logits=logits)
    assert a.nonfinite == (1, 2) and not a.finite and not a.within(1.0)
    assert a.flipped == (1, 2) and a.decision_agreement == 0.5
    assert a.max_prob_diff == 0.0 and a.max_logit_diff == 0.0
    assert a.finite_images().tolist() == [True, False, False, True]
    assert absolute_differences(REFERENCE, candidate, a.finite_images()).tolist() == [0.0, 0.0]


def test_no_images():
    a = compare(np.array([]), np.array([]), 0.5, 0.5)
    assert a.images == 0 and a.max_prob_diff is None and a.decision_agreement == 1.0 and a.within(0.0)


def test_the_result_is_json():
    """The FP16 manifest holds it as dataclasses.asdict gives it."""
    a = compare(REFERENCE, REFERENCE[::-1].copy(), 0.5, 0.5)
    assert json.loads(json.dumps(dataclasses.asdict(a)))["flipped"] == [0, 1, 2, 3]  # every decision reversed


def test_arrays_of_different_lengths_are_refused():
    with pytest.raises(SpecdetError, match="same images"):
        compare(REFERENCE, REFERENCE[:3], 0.5, 0.5)
