"""The training losses of both detectors.

Each loss takes the model's output dict and the labels (``[B]``, fake = 1,
real = 0) and returns ``(total, parts)``: the scalar to backpropagate and a
dict of its weighted-sum components, for logging.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DualBranchLoss(nn.Module):
    """Weighted BCE on the final logit and on each branch's auxiliary logit.

    The auxiliary terms make each branch learn to detect on its own, so the
    fusion cannot lean on one branch while the other stays untrained.
    """

    def __init__(self, final: float = 0.5, spatial: float = 0.25, frequency: float = 0.25):
        super().__init__()
        self.weights = {"final": final, "spatial": spatial, "frequency": frequency}

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        targets = labels.to(outputs["logit"].dtype)
        parts = {
            "final": F.binary_cross_entropy_with_logits(outputs["logit"], targets),
            "spatial": F.binary_cross_entropy_with_logits(outputs["spatial_logit"], targets),
            "frequency": F.binary_cross_entropy_with_logits(outputs["frequency_logit"], targets),
        }
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al., 2020, L_out): mean over anchors of -mean log p(positive | anchor).

    ``p(j | i) = exp(z_i . z_j / T) / sum_{a != i} exp(z_i . z_a / T)`` on
    L2-normalised embeddings; positives of ``i`` are the other samples with
    its label. Anchors without a positive in the batch are left out; a batch
    with none gives 0 (not NaN), still attached to the graph.
    """
    z = F.normalize(embeddings, dim=-1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    # Self-similarity is removed with a finite fill, not -inf: a one-sample
    # batch would otherwise give -inf - (-inf) = NaN, in values or in gradients.
    similarity = (z @ z.T / temperature).masked_fill(self_mask, torch.finfo(z.dtype).min)
    log_prob = similarity - similarity.logsumexp(dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    num_positives = positives.sum(dim=1)
    mean_log_prob = (log_prob * positives).sum(dim=1) / num_positives.clamp(min=1)
    has_positive = num_positives > 0
    return -(mean_log_prob * has_positive).sum() / has_positive.sum().clamp(min=1)


class RineSSCALoss(nn.Module):
    """BCE on the logit plus ``supcon_weight`` times SupCon on the embedding."""

    def __init__(self, supcon_weight: float = 0.2, temperature: float = 0.07):
        super().__init__()
        self.supcon_weight = supcon_weight
        self.temperature = temperature

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        parts = {
            "bce": F.binary_cross_entropy_with_logits(outputs["logit"], labels.to(outputs["logit"].dtype)),
            "supcon": supervised_contrastive_loss(outputs["embedding"], labels, self.temperature),
        }
        return parts["bce"] + self.supcon_weight * parts["supcon"], parts
