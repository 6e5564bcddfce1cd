"""The scoring interface shared by the exporter and the torch runtime."""

from __future__ import annotations

import torch
import torch.nn as nn


class ScoringModule(nn.Module):
    """Wraps a detector: normalised image ``[B, 3, H, W]`` to ``(logit [B], probability [B])``, fake = 1.

    Detectors return dicts with auxiliary outputs for training; deployment
    needs only the final logit and its probability, as plain tensors that
    export to named ONNX outputs.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.model(image)["logit"]
        return logit, torch.sigmoid(logit)
