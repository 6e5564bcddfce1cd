"""The model registry: every detector variant by name, with its default config and preprocessing.

A variant is one entry below: the model class and its config. Overrides
replace config fields by name, so a variant's knobs are exactly its config
dataclass's fields. The preprocessing constants are those of the pretrained
backbone the variant is built on; the exporter writes them into the manifest
so that runtimes never import this package to learn how to preprocess.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from specdet.errors import SpecdetError
from specdet.limits import MAX_CONFIG_INT, MAX_CONFIG_ITEMS, MAX_CONFIG_TEXT, MAX_INPUT_SIZE, MAX_MODEL_NUMBERS
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


# Config fields that count blocks, bands or heads, or give the input side: each is a loop over modules
# (or a mask of input_size squared per band) built before any weight, so a checkpoint asking for 100000
# blocks takes hours just to build. Every other int field is bounded by MAX_CONFIG_INT, and the whole
# model by MAX_MODEL_NUMBERS.
_FIELD_MAX = {
    "input_size": MAX_INPUT_SIZE, "vit_depth": 256, "vit_heads": 256, "num_bands": 64, "freq_grid": 256,
    "fusion_heads": 256, "clip_layers": 256, "clip_heads": 256, "attn_heads": 256, "patch_size": 256,
    "spatial_kernel": 255,
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
    defaults = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    checked = {key: _config_value(name, key, value, defaults[key]) for key, value in overrides.items()}
    return dataclasses.replace(config, **checked)


def create_model(name: str, **overrides) -> nn.Module:
    """Build the variant ``name``; keyword overrides replace its config fields.

    Every field is checked first (:func:`model_config`), then the model is built on PyTorch's meta device
    (shapes only, no memory) and refused above :data:`~specdet.limits.MAX_MODEL_NUMBERS` weights and buffers:
    a config from a checkpoint cannot make this allocate until the process is killed.
    """
    config = model_config(name, **overrides)
    # The same modules and shapes on the meta device; pretrained weights (where a config has them) are not read
    # for a count. The published detectors' configs have none: their weights come from detect-import.
    counted = dataclasses.replace(config, pretrained=False) if hasattr(config, "pretrained") else config
    with torch.device("meta"):
        shape = _variant(name).model(counted)
    numbers = sum(t.numel() for t in (*shape.parameters(), *shape.buffers()))
    if numbers > MAX_MODEL_NUMBERS:
        raise SpecdetError(f"model {name} with this config holds {numbers:,} weights and buffers, above the limit "
                           f"of {MAX_MODEL_NUMBERS:,}: check the config (a checkpoint's, or --set)")
    model = _variant(name).model(config)
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


def _config_value(model: str, key: str, value: Any, default: Any) -> Any:
    """``value`` for the config field ``key`` if it has the default's type and is in range; else a one-line error.

    Only scalars and flat lists of at most MAX_CONFIG_ITEMS numbers are taken, so a checkpoint's config that
    nests or refers to itself (a few bytes of pickle that expand to gigabytes) is refused without expanding it.
    """
    def problem(what: str) -> SpecdetError:
        shown = repr(value) if isinstance(value, (bool, int, float, str, type(None))) else type(value).__name__
        return SpecdetError(f"config field {key}={shown[:80]} of model {model} is {what}: fix the config "
                            "(re-save the checkpoint, or --set)")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise problem("not true or false")
        return value
    if isinstance(default, int):
        high = _FIELD_MAX.get(key, MAX_CONFIG_INT)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise problem(f"not a whole number from 1 to {high}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or abs(value) > MAX_CONFIG_INT:
            raise problem(f"not a finite number of at most {MAX_CONFIG_INT} in size")
        return float(value)
    if isinstance(default, str) or default is None:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > MAX_CONFIG_TEXT:
            raise problem(f"not text of at most {MAX_CONFIG_TEXT} characters")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) > MAX_CONFIG_ITEMS or not all(
                type(v) is int and 0 < v <= MAX_CONFIG_INT for v in value):
            raise problem(f"not a list of at most {MAX_CONFIG_ITEMS} whole numbers from 1 to {MAX_CONFIG_INT}")
        return tuple(value)
    raise problem("of a kind no config field takes")  # a field type added without a rule here


def _variant(name: str) -> RegistryEntry:
    if name not in _VARIANTS:
        raise SpecdetError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _VARIANTS[name]
