"""The pretrained backbones of both detectors, built at random or from local weights.

Weights are never downloaded: these machines have no hub access, and a
training job that hangs on a network call is worse than one that stops with a
message. Pretrained weights come from a local file or directory, or from a
Hugging Face cache that someone populated beforehand; every look-up here is
local-only, and a miss raises :class:`SpecdetError` saying how to supply them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import timm
import torch.nn as nn
from huggingface_hub import constants, try_to_load_from_cache
from transformers import CLIPVisionConfig, CLIPVisionModel

from specdet.errors import SpecdetError

# The weight files a timm model repository on the Hugging Face hub holds, best first.
_TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")

# The CLIP repository whose vision tower the full-size RINE model uses.
CLIP_L14_REPO = "openai/clip-vit-large-patch14"

_HOW_TO = "pass weights=/path/to/file or pre-populate the Hugging Face cache; use pretrained=False for random init"


def vit(name: str, pretrained: bool, weights: str | None, **model_kwargs) -> nn.Module:
    """A timm ViT without classifier (``num_classes=0``); ``model_kwargs`` resize it.

    With ``pretrained=True`` the weights come from ``weights`` (a local file)
    or, when that is None, from the model's repository in the Hugging Face
    cache. The cached file is resolved here and handed to timm as a file, so
    timm never takes its own (networked) hub path.
    """
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
    if weights is not None:
        if not Path(weights).is_file():
            raise SpecdetError(f"pretrained weights for {name} not found: no file {weights}; {_HOW_TO}")
        file = weights
    else:
        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
        file = _cached_file(repo, _TIMM_HUB_FILES) if repo else None
        if file is None:
            raise SpecdetError(
                f"pretrained weights for {name} not found: {repo} is not in the Hugging Face cache; {_HOW_TO}"
            )
    return timm.create_model(
        name, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=file), **model_kwargs
    )


def clip_vision(config: CLIPVisionConfig, pretrained: bool, weights: str | None) -> CLIPVisionModel:
    """A CLIP vision tower: random init from ``config``, or local pretrained weights.

    ``weights`` is a directory saved by ``save_pretrained`` or a hub repository
    id looked up in the Hugging Face cache only (default: CLIP ViT-L/14). The
    loaded tower must have the shape ``config`` asks for, so that the head
    built for it fits.
    """
    if not pretrained:
        return CLIPVisionModel(config)
    source = weights or CLIP_L14_REPO
    if _looks_like_path(source) and not Path(source).is_dir():
        raise SpecdetError(f"pretrained CLIP weights not found: no directory {source}; {_HOW_TO}")
    try:
        with _offline():
            model = CLIPVisionModel.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:  # ValueError: a malformed repository id
        raise SpecdetError(f"pretrained CLIP weights not found locally for {source}; {_HOW_TO}") from error
    shape = ("hidden_size", "num_hidden_layers", "image_size", "patch_size")
    got, want = ({k: getattr(c, k) for k in shape} for c in (model.config, config))
    if got != want:
        raise SpecdetError(f"CLIP weights at {source} have shape {got}, the model needs {want}; pick matching weights")
    return model


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face offline mode for one load.

    ``local_files_only`` alone is not enough: huggingface_hub still fetches
    its agent registry from the hub when it builds request headers. Its
    offline switch is read from ``HF_HUB_OFFLINE`` once, at import, into
    ``constants.HF_HUB_OFFLINE``, so both the variable and the constant are set.
    """
    previous_env, previous_constant = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous_constant
        if previous_env is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def _cached_file(repo: str, filenames: tuple[str, ...]) -> str | None:
    """The first of ``filenames`` present in the local Hugging Face cache of ``repo``."""
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _looks_like_path(source: str) -> bool:
    """A hub id is ``org/name``; anything else, or anything that exists on disk, is a path."""
    return Path(source).exists() or source.startswith((".", "/", "~")) or source.count("/") != 1
