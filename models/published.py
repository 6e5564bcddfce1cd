"""The published detectors, exactly: RINE (ECCV 2024) and UnivFD (CVPR 2023) on a frozen CLIP vision tower.

Both are a small trained head on OpenAI's CLIP ViT-L/14, released as a head
file only; ``detect-import`` (``import_published.py``) puts a released head and
a local CLIP tower into one of these models. The module layout of the heads
is the reference code's (``proj1``, ``proj2``, ``head`` Sequentials with their
Dropout slots; ``fc``), so the released keys load under the same names.

- RINE (Koutlis & Papadopoulos, github.com/mever-team/rine, ``src/models.py``):
  the output of ``ln_2`` of every residual block (the normalised input of the
  block's MLP, read by forward hooks there), token 0 (CLS); ``proj1``, a
  softmax-over-blocks importance weight ``alpha`` per block and channel, a sum
  over blocks, ``proj2`` and a three-layer ``head``. Dropout is off at inference.
- UnivFD (Ojha et al., github.com/WisconsinAIVision/UniversalFakeDetect,
  ``models/clip_models.py``): one linear layer ``fc`` on CLIP's image
  embedding (``ln_post`` of the CLS token times the visual projection).

The tower is transformers' CLIP vision transformer (``embeddings``,
``pre_layrnorm``, ``encoder.layers``, ``post_layernorm``: the same names in
transformers 4 and 5), whose parameters correspond one to one with OpenAI's
(``import_published.openai_to_hf``); UnivFD adds CLIP's visual projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection


@dataclass(frozen=True)
class ClipTowerConfig:
    """The CLIP vision tower; the defaults are ViT-L/14 at 224 pixels."""

    input_size: int = 224  # square input side
    clip_hidden: int = 1024  # width
    clip_layers: int = 24  # residual blocks
    clip_heads: int = 16  # attention heads
    clip_intermediate: int = 4096  # MLP width
    patch_size: int = 14

    def clip_config(self, **extra) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.clip_hidden,
            num_hidden_layers=self.clip_layers,
            num_attention_heads=self.clip_heads,
            intermediate_size=self.clip_intermediate,
            image_size=self.input_size,
            patch_size=self.patch_size,
            hidden_act="quick_gelu",  # OpenAI's CLIP: x * sigmoid(1.702 x)
            layer_norm_eps=1e-5,  # torch's LayerNorm default, as OpenAI's CLIP uses
            **extra,
        )


@dataclass(frozen=True)
class RineConfig(ClipTowerConfig):
    # The released heads: 1-class and LDM nproj=4, proj_dim=1024; 2-class 4, 128; 4-class 2, 1024
    # (get_our_trained_model in the reference src/utils.py). detect-import reads both from the head file.
    nproj: int = 4  # Linear+ReLU+Dropout stages in each of proj1 and proj2
    proj_dim: int = 128


@dataclass(frozen=True)
class UnivFDConfig(ClipTowerConfig):
    projection_dim: int = 768  # CLIP ViT-L/14's image embedding width


def _projection(in_dim: int, dim: int, stages: int) -> nn.Sequential:
    """The reference's proj1/proj2: ``Dropout, (Linear, ReLU, Dropout) x stages`` (Linears at 1, 4, 7, ...)."""
    layers: list[nn.Module] = [nn.Dropout()]
    for i in range(stages):
        layers += [nn.Linear(in_dim if i == 0 else dim, dim), nn.ReLU(), nn.Dropout()]
    return nn.Sequential(*layers)


def clip_tower(config: CLIPVisionConfig) -> nn.Module:
    """The vision transformer inside transformers' CLIP vision model, frozen and in eval mode.

    Taken from ``CLIPVisionModelWithProjection.vision_model``, whose class
    differs between transformers versions but whose parameter names do not.
    """
    tower = CLIPVisionModelWithProjection(config).vision_model
    tower.requires_grad_(False)
    return tower.eval()


class Rine(nn.Module):
    """RINE as published. Returns ``{"logit": [B], "embedding": [B, proj_dim]}`` (the reference's ``p``, ``z``)."""

    def __init__(self, config: RineConfig):
        super().__init__()
        self.config = config
        self.backbone = clip_tower(config.clip_config())
        d = config.proj_dim
        self.alpha = nn.Parameter(torch.zeros(1, config.clip_layers, d))
        self.proj1 = _projection(config.clip_hidden, d, config.nproj)
        self.proj2 = _projection(d, d, config.nproj)
        self.head = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Dropout(), nn.Linear(d, d), nn.ReLU(), nn.Dropout(), nn.Linear(d, 1)
        )

    def train(self, mode: bool = True) -> Rine:
        """The frozen tower stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def block_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, layers, width]``: the CLS token of each block's ``ln_2`` output (layer_norm2 here).

        The blocks are run here rather than through the tower's forward so
        that the tap sits inside each block without hooks (which would keep
        state on the module between calls); the last block's MLP and the
        final LayerNorm feed nothing RINE reads and are skipped.
        """
        tower = self.backbone
        hidden = tower.pre_layrnorm(tower.embeddings(x))
        taps = []
        blocks = tower.encoder.layers
        for i, block in enumerate(blocks):
            hidden = hidden + block.self_attn(hidden_states=block.layer_norm1(hidden), attention_mask=None)[0]
            normed = block.layer_norm2(hidden)
            taps.append(normed[:, 0])
            if i + 1 < len(blocks):
                hidden = hidden + block.mlp(normed)
        return torch.stack(taps, dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.proj1(self.block_tokens(x))  # [B, layers, d]
        z = self.proj2((torch.softmax(self.alpha, dim=1) * g).sum(dim=1))  # [B, d]
        return {"logit": self.head(z).squeeze(-1), "embedding": z}


class UnivFD(nn.Module):
    """UnivFD as published. Returns ``{"logit": [B], "embedding": [B, projection_dim]}`` (CLIP's image embedding)."""

    def __init__(self, config: UnivFDConfig):
        super().__init__()
        self.config = config
        self.backbone = clip_tower(config.clip_config())
        self.projection = nn.Linear(config.clip_hidden, config.projection_dim, bias=False)  # CLIP's, frozen
        self.projection.requires_grad_(False)
        self.fc = nn.Linear(config.projection_dim, 1)

    def train(self, mode: bool = True) -> UnivFD:
        """The frozen tower stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # CLIP's encode_image: ln_post of the CLS token (the pooled output), times the projection.
        features = self.projection(self.backbone(pixel_values=x).pooler_output)  # [B, projection_dim]
        return {"logit": self.fc(features).squeeze(-1), "embedding": features}
