"""The training losses against values computed by hand or with NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specdet.train.losses import DualBranchLoss, RineSSCALoss, supervised_contrastive_loss


def bce(logits, labels):
    x, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.log1p(np.exp(x)) - x * y))


def supcon_reference(z, labels, temperature):
    """Khosla et al.'s L_out, written as loops over anchors and positives."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, losses = len(z), []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(z[i] @ z[a] / temperature) for a in range(n) if a != i)
        losses.append(-np.mean([math.log(math.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]))
    return float(np.mean(losses)) if losses else 0.0


def test_dual_branch_loss_weights_the_three_bce_terms():
    labels = torch.tensor([1.0, 0.0])
    outputs = {
        "logit": torch.tensor([0.0, 2.0]),
        "spatial_logit": torch.tensor([1.0, -1.0]),
        "frequency_logit": torch.tensor([-2.0, 0.5]),
    }
    total, parts = DualBranchLoss()(outputs, labels)
    expected = {
        "final": bce([0.0, 2.0], [1, 0]),
        "spatial": bce([1.0, -1.0], [1, 0]),
        "frequency": bce([-2.0, 0.5], [1, 0]),
    }
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-6)
    weighted = 0.5 * expected["final"] + 0.25 * expected["spatial"] + 0.25 * expected["frequency"]
    assert total.item() == pytest.approx(weighted, rel=1e-6)


def test_supcon_hand_computed_case():
    # Anchor 0's positive is 1 (similarity 0) against 2 (similarity 1): log(1 + e).
    # Anchor 1's positive is 0 (similarity 0) against 2 (similarity 0): log 2.
    # Anchor 2 has no positive and is left out.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = supervised_contrastive_loss(z, torch.tensor([0, 0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx((math.log(1 + math.e) + math.log(2)) / 2, rel=1e-6)


@pytest.mark.parametrize("labels", [[0, 1, 1, 0, 1, 0], [1, 1, 1, 1], [0, 1, 1]])
def test_supcon_matches_reference(labels):
    z = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = supervised_contrastive_loss(z, torch.tensor(labels), temperature=0.07)
    assert loss.item() == pytest.approx(supcon_reference(z.numpy(), labels, 0.07), rel=1e-9)


@pytest.mark.parametrize("labels", [[0, 1], [1]], ids=["no-positives", "single-sample"])
def test_supcon_without_positives_is_zero_with_finite_gradients(labels):
    z = torch.randn(len(labels), 4, requires_grad=True)
    loss = supervised_contrastive_loss(z, torch.tensor(labels), temperature=0.07)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(z.grad).all()


def test_rine_ssca_loss_adds_weighted_supcon():
    labels = torch.tensor([1, 0, 1])
    embedding = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    outputs = {"logit": torch.tensor([0.3, -1.2, 2.0]), "embedding": embedding}
    total, parts = RineSSCALoss(supcon_weight=0.2, temperature=0.07)(outputs, labels)
    assert parts["bce"].item() == pytest.approx(bce([0.3, -1.2, 2.0], [1, 0, 1]), rel=1e-6)
    expected_supcon = supcon_reference(outputs["embedding"].double().numpy(), labels.tolist(), 0.07)
    assert parts["supcon"].item() == pytest.approx(expected_supcon, rel=1e-4)  # float32 at T = 0.07
    assert total.item() == pytest.approx(parts["bce"].item() + 0.2 * parts["supcon"].item(), rel=1e-6)
