"""The fast GPU path for both detectors (issue 20, point 3): the scoring module transformed once, at load, so that
its captured CUDA graph replays the model's own work and little else.

:func:`fast_module` applies the transformations below in this order; each is a small function that keeps the
scores within the numerics contract (largest probability difference against CPU FP32 <= 1e-3), and
``tests/test_fast_graph.py`` checks each on the tiny detectors:

1. :func:`fold_batchnorm`: the frequency branch's conv + BatchNorm pairs become one conv with a bias (FP32 math;
   the same scores to rounding).
2. :func:`drop_unused_pooler`: RINE+SSCA reads CLIP's hidden states only; the tower's post-layernorm (its pooler
   output) is computed for nothing and becomes an identity (the same scores exactly).
3. :func:`channels_last_convs`: the frequency branch's convolutions in channels-last memory, the layout cuDNN's
   FP16 tensor-core kernels take without a transpose of their own.
4. :func:`half_backbones`: the backbones, where nearly all the FLOPs are (the ViT and the frequency convs; the
   CLIP tower), cast to FP16 once. Under autocast a CUDA graph replays the weight casts it captured on every
   replay (its weight cache cannot be used across a capture); here there are none. The band split's FFT (always
   FP32 inside: cuFFT has no FP16 for 224-point sides) and the heads (from the backbones' features to the logit
   and its sigmoid) stay FP32: they are a small share of the work and the logit's last digits are the
   probability's (on the CPU, FP16 heads made the full-size models' largest difference 2.4x to 4x larger).
   Inside the backbones everything is FP16, LayerNorm and softmax included: on the CPU the full-size models
   stayed within 1.4e-4 of FP32 (README, "On a GPU").
5. :func:`feed_band_split_fp16`: the frequency branch takes its image in FP16, so our band-split kernel
   (``-kernels`` variants) reads and writes FP16; the ``torch.fft`` path upcasts inside and its FP32 bands are
   cast to FP16 (and channels-last, in the same copy) by the first conv.
6. :func:`cast_inputs_to_weights`: every module with weights gets its floating inputs in its weights' dtype, so
   FP16 and FP32 parts meet without a cast written into the models.
7. :class:`InGraphNormalise`: uint8 ``[N, crop, crop, 3]`` crops in, normalised as the module's first ops
   (:func:`~specdet.runtime.torch_runner.normalise_tensor`, the same float32 values as the CPU's): captured in
   the CUDA graph, nothing float crosses PCIe and no normalisation runs outside it.

:class:`FastGraphRunner` runs the result as :class:`~specdet.benchmarks.torch_variants.TorchVariantRunner` runs
the others (CUDA graphs per batch shape, optionally ``torch.compile`` inside them), with uint8 crops as the
graph's input. FP8 is not tried: Hopper's FP8 matrix products need scaled-matmul rewrites of every linear layer
(Transformer Engine or torchao), not a cast, and would need a calibration of their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from specdet.benchmarks.torch_variants import TorchVariantRunner
from specdet.errors import SpecdetError
from specdet.models.dual_branch import DualBranch
from specdet.models.rine_ssca import RineSSCA
from specdet.runtime.preprocess import normalise_table
from specdet.runtime.torch_runner import normalise_constants, normalise_tensor


def fold_batchnorm(module: nn.Module) -> int:
    """Each eval-mode ``Conv2d`` followed by a ``BatchNorm2d`` in an ``nn.Sequential`` becomes one conv (the
    BatchNorm's scale in its weights, its shift in its bias) and an identity: one kernel and one pass over the
    feature map fewer per pair. Returns the number of pairs folded."""
    folded = 0
    for parent in module.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for i in range(len(parent) - 1):
            conv, norm = parent[i], parent[i + 1]
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and not norm.training
                    and not conv.training):  # fuse_conv_bn_eval asserts both are in eval mode
                parent[i], parent[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
                folded += 1
    return folded


def drop_unused_pooler(model: nn.Module) -> bool:
    """RINE+SSCA reads its CLIP tower's hidden states, never the pooler output (the post-layernorm of the last
    CLS token): an identity in its place skips that work and changes no score. Only for RINE+SSCA: other CLIP
    detectors read the pooler. Returns whether one was dropped."""
    if not isinstance(model, RineSSCA):
        return False
    if not isinstance(getattr(model.backbone, "post_layernorm", None), nn.LayerNorm):
        raise SpecdetError("this transformers' CLIPVisionModel has no post_layernorm where the fast path looks for "
                           "it: use torch-cuda-graphs-fp16")
    model.backbone.post_layernorm = nn.Identity()
    return True


def backbones(model: nn.Module) -> list[nn.Module]:
    """The parts of a detector that hold nearly all its FLOPs: they run in FP16."""
    if isinstance(model, DualBranch):
        return [model.vit, model.frequency.stacks]
    if isinstance(model, RineSSCA):
        return [model.backbone]
    raise SpecdetError(f"the fast path knows the dual-branch and RINE+SSCA detectors, not {type(model).__name__}: "
                       "use torch-cuda-graphs-fp16")


def channels_last_convs(model: nn.Module) -> None:
    """The dual-branch frequency convolutions' weights in channels-last memory: cuDNN then picks NHWC kernels and
    writes NHWC maps, with no layout change between layers (the input is converted once, by the first conv's
    input cast: :func:`cast_inputs_to_weights`)."""
    if isinstance(model, DualBranch):
        model.frequency.stacks.to(memory_format=torch.channels_last)


def half_backbones(model: nn.Module, dtype: torch.dtype = torch.float16) -> None:
    """The backbones' weights cast to ``dtype`` once; the rest of the model stays FP32."""
    for part in backbones(model):
        part.to(dtype)


def feed_band_split_fp16(model: nn.Module, dtype: torch.dtype = torch.float16) -> None:
    """The dual-branch frequency branch's image cast to ``dtype`` on entry: the band split is fed, and with our
    kernels writes, half the bytes."""
    if isinstance(model, DualBranch):
        model.frequency.register_forward_pre_hook(_cast_hook(dtype, None), with_kwargs=True)


def cast_inputs_to_weights(module: nn.Module) -> None:
    """Every module holding weights of its own casts its floating inputs to their dtype (and a conv with
    channels-last weights its input to channels-last, in the same copy): an FP16 backbone takes the FP32 image,
    an FP32 head takes FP16 features. An input already right is passed as it is, with no copy."""
    for part in module.modules():
        weights = [p for p in part.parameters(recurse=False) if p.is_floating_point()]
        if weights:
            layout = torch.channels_last if _channels_last(weights[0]) else None
            part.register_forward_pre_hook(_cast_hook(weights[0].dtype, layout), with_kwargs=True)


def _channels_last(weight: torch.Tensor) -> bool:
    """A conv weight that :func:`channels_last_convs` converted (a 1x1 kernel is both layouts: it is left alone)."""
    return (weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous())


def _cast_hook(dtype: torch.dtype, layout: torch.memory_format | None):
    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if layout is not None and value.dim() == 4:
                return value.to(dtype=dtype, memory_format=layout)
            return value.to(dtype)
        return value

    def hook(_module, args, kwargs):
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    return hook


class InGraphNormalise(nn.Module):
    """uint8 ``[N, crop, crop, 3]`` crops to scores: :func:`normalise_tensor` (the CPU's float32 values) as the first
    ops, then the scoring module. Its constants are buffers, so they move with the module and a captured graph
    reads them from the device."""

    def __init__(self, scoring: nn.Module, spec: dict):
        super().__init__()
        self.scoring = scoring
        self.spec = spec
        scale, mean, std = normalise_constants(spec, torch.device("cpu"))
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scoring(normalise_tensor(crops, self.spec, (self.scale, self.mean, self.std)))


def fast_module(scoring: nn.Module, spec: dict, dtype: torch.dtype = torch.float16) -> InGraphNormalise:
    """``scoring`` (a ``ScoringModule``, in eval mode) transformed in place by steps 1 to 6 and wrapped by step 7.
    ``dtype``: FP16 on the GPU; BF16 is the CPU proxy where FP16 kernels are missing."""
    model = scoring.model
    fold_batchnorm(model)
    drop_unused_pooler(model)
    channels_last_convs(model)
    half_backbones(model, dtype)
    feed_band_split_fp16(model, dtype)
    cast_inputs_to_weights(scoring)
    return InGraphNormalise(scoring, spec)


def crops_of(batch: np.ndarray, spec: dict) -> np.ndarray:
    """The uint8 ``[N, crop, crop, 3]`` crops whose normalisation is exactly ``batch`` (float32 ``[N, 3, crop,
    crop]``): the benchmark hands every variant normalised images, and the fast path takes the crops they came
    from. Each channel's table of 256 values is increasing (std > 0), so a value's crop byte is its index there."""
    table = normalise_table(tuple(spec["mean"]), tuple(spec["std"]))
    crops = np.empty((batch.shape[0], *batch.shape[2:], 3), dtype=np.uint8)
    for channel in range(3):
        index = np.searchsorted(table[channel], batch[:, channel]).clip(0, 255)
        if not np.array_equal(table[channel][index], batch[:, channel]):
            raise SpecdetError("the fast path scores uint8 crops, and this batch is not the normalisation of any: "
                               "preprocess images with specdet.runtime.preprocess or pass crops to infer_crops")
        crops[..., channel] = index
    return crops


class FastGraphRunner(TorchVariantRunner):
    """:func:`fast_module` run as the torch variants run (on the device, captured per batch shape as a CUDA graph,
    optionally compiled inside it), with uint8 crops as the module's input: nothing float crosses PCIe."""

    def __init__(self, base, *, dtype: torch.dtype = torch.float16, **options):
        self._dtype = dtype
        super().__init__(base, **options)
        self._input_dtype = torch.uint8

    def _prepare(self, module: nn.Module) -> nn.Module:
        return fast_module(module, self.info.preprocessing, self._dtype)

    def _device_input(self, batch: np.ndarray):
        """The crops ``batch`` normalises, on the device (uint8: a quarter of the float bytes)."""
        return self._torch.from_numpy(crops_of(batch, self.info.preprocessing)).to(self._device)

    def _from_crops(self, crops):
        """The crops as they are: the module normalises them, inside the graph."""
        return crops
