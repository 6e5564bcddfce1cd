"""Training options and each detector family's recipe (the seeds' defaults).

A :class:`TrainConfig` holds what ``detect-train`` was asked; fields left at
None take the recipe of the model's family (:data:`RECIPES`) when the run
starts, and the resolved config is what checkpoints and the resume state
record. Resuming layers the options the user gives again over the saved
ones, so ``--resume STATE --epochs 20`` extends a run and changes nothing else.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from specdet.errors import SpecdetError
from specdet.models.dual_branch import DualBranch
from specdet.models.rine_ssca import RineSSCA
from specdet.train.losses import DualBranchLoss, RineSSCALoss

# Training's mixed precision (--precision): the dtype torch.autocast computes in, or "auto" to choose by device.
# Not an artifact's precision (specdet.manifest.PRECISIONS), which is how an exported file stores its numbers.
AMP_MODES = ("auto", "fp32", "bf16", "fp16")
# Settings of the machine a run happens to be on: a resumed run starts them afresh.
MACHINE_FIELDS = ("device", "workers", "threads", "precision", "channels_last", "compile")


@dataclass(frozen=True)
class Recipe:
    """How a detector family trains by default."""

    loss: Callable[[], nn.Module]  # builds the loss: (outputs, labels) -> (total, parts)
    optimizer: Callable[..., torch.optim.Optimizer]  # called as optimizer(params, lr=..., weight_decay=...)
    lr: float
    weight_decay: float
    grad_clip: float  # largest gradient norm; 0 = no clipping
    epochs: int
    batch_size: int  # per process
    staged: bool  # whether --stages (branches, joint, fusion) applies


RECIPES: dict[type[nn.Module], Recipe] = {
    # The dual-branch seed: multi-task loss 0.5/0.25/0.25, AdamW, clipping at 1.0.
    DualBranch: Recipe(DualBranchLoss, torch.optim.AdamW, 1e-4, 0.05, 1.0, 10, 32, staged=True),
    # RINE (Koutlis & Papadopoulos, 2024): BCE + 0.2 SupCon at T = 0.07, Adam at 1e-3, one epoch, batch 128.
    RineSSCA: Recipe(RineSSCALoss, torch.optim.Adam, 1e-3, 0.0, 0.0, 1, 128, staged=False),
}


def recipe_for(model: nn.Module) -> Recipe:
    for family, recipe in RECIPES.items():
        if isinstance(model, family):
            return recipe
    raise SpecdetError(f"no training recipe for {type(model).__name__}: train a dual_branch_* or rine_ssca_* model")


@dataclass(frozen=True)
class TrainConfig:
    arch: str  # registry name, e.g. dual_branch_tiny
    data: str  # training folder: 0_real/ + 1_fake/ (or real/ + fake/), directly or per source
    val: str | None = None  # validation folder, same layouts; selects the best epoch and calibrates
    output: str = "model.pth"  # best checkpoint; the resume state and the JSONL log go beside it
    epochs: int | None = None  # None: the recipe's; with stages, their sum
    batch_size: int | None = None  # per process; None: the recipe's
    lr: float | None = None  # None: the recipe's
    weight_decay: float | None = None  # None: the recipe's
    grad_clip: float | None = None  # largest gradient norm, 0 = off; None: the recipe's
    stages: tuple[int, int, int] | None = None  # epochs of (branches, joint, fusion); dual-branch only
    seed: int = 0  # model init, shuffling, augmentation and dropout all derive from it
    blur_prob: float = 0.5  # probability of the Gaussian blur augmentation (CNNDetection: 0.5)
    jpeg_prob: float = 0.5  # probability of the JPEG augmentation (CNNDetection: 0.5)
    calibrate_fpr: float | None = 0.05  # threshold at this FPR on validation reals; None: 0.5
    model_overrides: dict[str, Any] = field(default_factory=dict)  # create_model(arch, **overrides)
    # Machine settings: not part of the recipe, re-read on every (resumed) run.
    device: str | None = None  # None: cuda when available, else cpu
    workers: int | None = None  # data-loading processes per training process; None: from the CPU count
    threads: int | None = None  # CPU threads of the model's ops (torch.set_num_threads); None: PyTorch's default
    # One of AMP_MODES; auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU. The name is
    # the flag's and the key checkpoints record, so it stays "precision".
    precision: str = "auto"
    channels_last: bool | None = None  # None: on for CUDA (convolutions), off on the CPU
    compile: bool = False  # torch.compile the training model

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name.replace('_', '-')} must be at least 1")
        for name in ("blur_prob", "jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name.replace('_', '-')} must be in [0, 1]")
        if self.calibrate_fpr is not None and not 0.0 <= self.calibrate_fpr < 1.0:
            problems.append("calibrate-fpr must be in [0, 1)")
        if self.stages is not None:
            if len(self.stages) != 3 or min(self.stages) < 0 or sum(self.stages) < 1:
                problems.append("stages must be three epoch counts (branches, joint, fusion), not all 0")
            elif self.epochs is not None and self.epochs != sum(self.stages):
                problems.append(f"epochs {self.epochs} differs from the sum of stages {sum(self.stages)}; drop one")
        if self.precision not in AMP_MODES:
            problems.append(f"precision must be one of {', '.join(AMP_MODES)}")
        if problems:
            raise SpecdetError(f"invalid training options: {'; '.join(problems)}")

    def with_recipe(self, recipe: Recipe) -> TrainConfig:
        """Fill the fields left at None from ``recipe``."""
        if self.stages is not None and not recipe.staged:
            raise SpecdetError(f"--stages applies to dual-branch models, not {self.arch}: drop it")
        fills = {
            "epochs": sum(self.stages) if self.stages else recipe.epochs,
            "batch_size": recipe.batch_size,
            "lr": recipe.lr,
            "weight_decay": recipe.weight_decay,
            "grad_clip": recipe.grad_clip,
        }
        return dataclasses.replace(self, **{k: v for k, v in fills.items() if getattr(self, k) is None})

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so the dict can go into a ``weights_only`` checkpoint."""
        values = dataclasses.asdict(self)
        values["stages"] = list(self.stages) if self.stages else None
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if values.get("stages") is not None:
            values["stages"] = tuple(values["stages"])
        return cls(**values)


def resume_config(saved: Mapping[str, Any], given: Mapping[str, Any]) -> TrainConfig:
    """The resumed run's config: the saved one, machine settings back at their defaults, ``given`` over both."""
    saved = TrainConfig.from_dict(saved)
    if given.get("arch", saved.arch) != saved.arch:
        raise SpecdetError(f"the resumed run trains {saved.arch}, not {given['arch']}: drop --arch")
    if "model_overrides" in given:
        raise SpecdetError("--set cannot change the model of a resumed run: drop --set")
    given = dict(given)
    if "stages" in given and "epochs" not in given:
        given["epochs"] = sum(given["stages"])
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in MACHINE_FIELDS}
    return dataclasses.replace(saved, **{**defaults, **given})


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` to a dict; values are Python literals (numbers, tuples, True), else strings."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecdetError(f"--set expects key=value, got {item!r}")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides
