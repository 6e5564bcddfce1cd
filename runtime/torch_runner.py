"""The ``torch`` backend: runs a checkpoint (``.pth``) in PyTorch, the reference for every other backend."""

from __future__ import annotations

import os

import numpy as np
import torch

from specdet import models
from specdet.manifest import BATCH_AXIS, INPUT_NAME
from specdet.models import checkpoint
from specdet.runtime.base import ArtifactInfo, Runner, RunnerOptions, TensorSpec


def normalise_tensor(crops: torch.Tensor, spec: dict, constants: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """:func:`specdet.runtime.preprocess.normalise` in torch, on the crops' device, to the same float32 values.

    uint8 ``[N, crop, crop, 3]`` in, float32 ``[N, 3, crop, crop]`` out. Every
    division is by a tensor: CUDA divides by a Python scalar as a product
    with its reciprocal, which can differ from NumPy in the last bit.
    ``constants`` (:func:`normalise_constants`, made once on the device) spares
    the copies of the constants, each of which waits for the device's stream.
    """
    scale, mean, std = constants or normalise_constants(spec, crops.device)
    return (crops.permute(0, 3, 1, 2).float() / scale - mean) / std


def normalise_constants(spec: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The divisors and mean of :func:`normalise_tensor` on ``device``: 255, mean and std, float32."""
    scale = torch.full((1, 1, 1, 1), 255.0, dtype=torch.float32, device=device)
    mean = torch.tensor(spec["mean"], dtype=torch.float32, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(spec["std"], dtype=torch.float32, device=device).reshape(1, 3, 1, 1)
    return scale, mean, std


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, artifact: str | os.PathLike, options: RunnerOptions):
        loaded = checkpoint.load(artifact, arch=options.arch)
        if options.threads is not None:
            # PyTorch has one intra-op thread pool per process, so this is global.
            torch.set_num_threads(options.threads)
        self._module = models.ScoringModule(loaded.model).eval()
        crop = loaded.preprocessing["crop"]
        super().__init__(
            artifact,
            ArtifactInfo(
                architecture=loaded.architecture,
                preprocessing=loaded.preprocessing,
                threshold=loaded.threshold,
                input=TensorSpec(INPUT_NAME, (BATCH_AXIS, 3, crop, crop), "float32"),
                max_batch=None,
            ),
        )

    @property
    def module(self) -> torch.nn.Module:
        """The ``ScoringModule`` (image batch -> logit, probability) this runner calls, in eval mode."""
        self.ensure_open()
        return self._module

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            logit, probability = self._module(torch.from_numpy(batch))
        return {"logit": logit.numpy(), "probability": probability.numpy()}

    def _close(self) -> None:
        del self._module
