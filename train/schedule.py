"""The dual-branch seed's staged schedule: branches first, then joint, then fusion only.

- ``branches``: the spatial and frequency branches learn alone, through their
  auxiliary heads (loss: the two auxiliary terms); the fusion is frozen.
- ``joint``: everything trains on the full multi-task loss.
- ``fusion``: the branches are frozen (their BatchNorm statistics too) and the
  fusion and final head adapt to them.

Without ``--stages`` every epoch is ``joint``. Parameters frozen by the model
itself (RINE's CLIP tower) stay frozen in every stage.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from specdet.train.losses import DualBranchLoss

STAGES = ("branches", "joint", "fusion")
JOINT = "joint"

# DualBranch's submodules that make up the two branches; the rest is the fusion.
BRANCH_MODULES = ("vit", "frequency", "spatial_head", "frequency_head")


def stage_at(epoch: int, stages: tuple[int, int, int] | None) -> str:
    """The stage of 0-based ``epoch``."""
    if stages is None:
        return JOINT
    end = 0
    for name, length in zip(STAGES, stages):
        end += length
        if epoch < end:
            return name
    return STAGES[-1]


def stage_loss(stage: str, loss: nn.Module) -> nn.Module:
    """The recipe's loss, without the final-logit term while only the branches train."""
    return DualBranchLoss(final=0.0) if stage == "branches" else loss


def apply_stage(model: nn.Module, stage: str, trainable: Iterable[str]) -> None:
    """Set which of the ``trainable`` parameters (by name) get gradients in ``stage``."""
    trainable = set(trainable)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable and _trains(name, stage))


def set_train_mode(model: nn.Module, stage: str) -> None:
    """Training mode, except for the frozen branches of the fusion stage."""
    model.train()
    if stage == "fusion":
        for name in BRANCH_MODULES:
            getattr(model, name).eval()


def _trains(name: str, stage: str) -> bool:
    in_branch = name.split(".", 1)[0] in BRANCH_MODULES
    return stage == JOINT or (stage == "branches") == in_branch
