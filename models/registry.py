"""The model registry: every detector variant by name, with its default config and preprocessing.

A variant is one entry below: the model class and its config. Overrides
replace config fields by name, so a variant's knobs are exactly its config
dataclass's fields. The preprocessing constants are those of the pretrained
backbone the variant is built on; the exporter writes them into the manifest
so that runtimes never import this package to learn how to preprocess.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from specdet.errors import SpecdetError
from specdet.models.dual_branch import DualBranch, DualBranchConfig
from specdet.models.published import Rine, RineConfig, UnivFD, UnivFDConfig
from specdet.models.rine_ssca import RineSSCA, RineSSCAConfig

# Normalisation of timm's vit_base_patch16_224 weights.
VIT_STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}
# Normalisation of OpenAI's CLIP weights.
CLIP_STATS = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
}


@dataclass(frozen=True)
class RegistryEntry:
    model: type[nn.Module]  # built as model(config)
    config: Any  # the default config dataclass
    stats: dict  # mean, std and interpolation of the backbone's pretrained weights
    # An image smaller than the crop is zero-padded (torchvision's CenterCrop, as the published
    # detectors' evaluation does) rather than scaled up: see specdet.runtime.preprocess.
    pad_small: bool = False


# The tiny variants: the same code at about 0.2 M parameters, for tests and CPU smoke runs.
_TINY_VIT = dict(
    vit_embed_dim=64, vit_depth=2, vit_heads=2, freq_channels=(8, 8, 16, 16), fusion_dim=32, fusion_heads=2
)
_TINY_CLIP = dict(
    clip_hidden=64,
    clip_layers=2,
    clip_heads=2,
    clip_intermediate=128,
    proj_dim=32,
    embed_dim=32,
    attn_heads=2,
    gate_hidden=64,
)
# OpenAI's CLIP has a head per 64 channels (its state dicts do not say), so a tiny tower that an OpenAI-layout
# file describes is 128 wide for 2 heads.
_TINY_TOWER = dict(clip_hidden=128, clip_layers=2, clip_heads=2, clip_intermediate=256)

_VARIANTS: dict[str, RegistryEntry] = {
    "dual_branch_vit_b16": RegistryEntry(DualBranch, DualBranchConfig(), VIT_STATS),
    "dual_branch_tiny": RegistryEntry(DualBranch, DualBranchConfig(**_TINY_VIT), VIT_STATS),
    "rine_ssca_clip_l14": RegistryEntry(RineSSCA, RineSSCAConfig(), CLIP_STATS),
    "rine_ssca_tiny": RegistryEntry(RineSSCA, RineSSCAConfig(**_TINY_CLIP), CLIP_STATS),
    # The published detectors (models/published.py), imported with detect-import.
    "rine_clip_l14": RegistryEntry(Rine, RineConfig(), CLIP_STATS, pad_small=True),
    "rine_tiny": RegistryEntry(Rine, RineConfig(**_TINY_TOWER, nproj=2, proj_dim=16), CLIP_STATS, pad_small=True),
    "univfd_clip_l14": RegistryEntry(UnivFD, UnivFDConfig(), CLIP_STATS, pad_small=True),
    "univfd_tiny": RegistryEntry(UnivFD, UnivFDConfig(**_TINY_TOWER, projection_dim=32), CLIP_STATS, pad_small=True),
}


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def model_config(name: str, **overrides) -> Any:
    """The config ``create_model(name, **overrides)`` builds from."""
    config = _variant(name).config
    fields = sorted(f.name for f in dataclasses.fields(config))
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise SpecdetError(f"unknown option(s) {', '.join(unknown)} for model {name}; valid: {', '.join(fields)}")
    return dataclasses.replace(config, **overrides)


def create_model(name: str, **overrides) -> nn.Module:
    """Build the variant ``name``; keyword overrides replace its config fields."""
    model = _variant(name).model(model_config(name, **overrides))
    model.arch_name = name
    return model


def default_preprocessing(name: str, **overrides) -> dict:
    """``{"resize", "crop", "mean", "std", "interpolation"}`` for the variant, and ``"pad_small": True`` for
    the variants that zero-pad a small image.

    ``resize=None``: images are centre-cropped to ``crop`` without resizing
    (and resized only when smaller than ``crop``, or padded with ``pad_small``),
    because resampling blurs the high-frequency traces a detector looks for.
    """
    entry = _variant(name)
    stats = entry.stats
    padding = {"pad_small": True} if entry.pad_small else {}
    return {
        "resize": None,
        "crop": model_config(name, **overrides).input_size,
        "mean": list(stats["mean"]),
        "std": list(stats["std"]),
        "interpolation": stats["interpolation"],
        **padding,
    }


def _variant(name: str) -> RegistryEntry:
    if name not in _VARIANTS:
        raise SpecdetError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _VARIANTS[name]
