"""RINE + SSCA detector: a frozen CLIP vision tower read at every block, plus a spectrum-spatial attention branch.

RINE (Koutlis & Papadopoulos, 2024): the CLS token of every block, projected
(Q1), weighted per layer and channel by a Trainable Importance Estimator,
projected again (Q2). SSCA (spectrum-spatial collaborative attention): the
last block's patch tokens as a feature map, reweighted per channel from its
spectrum and per cell from a spatial attention map, then read as tokens. The
RINE feature queries those tokens by cross-attention; a gated MLP mixes both;
a class head gives the logit and a representation head an L2-normalised
embedding for the supervised contrastive loss.

Corrections to the seed design (each tested):
- SSCA gets a real spatial map (the patch tokens); the seed fed it a
  spatially constant map, whose spectrum is pure DC;
- the spectral channel attention reads the spectrum magnitude; the seed's
  ``irfft2(rfft2(x) * w)`` with a per-channel scalar ``w`` is just ``w * x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig

from specdet.models import backbones
from specdet.models.spectral import spectrum_magnitude_mean


@dataclass(frozen=True)
class RineSSCAConfig:
    input_size: int = 224  # square input side
    clip_hidden: int = 1024  # CLIP vision width (ViT-L/14)
    clip_layers: int = 24  # CLIP vision blocks: RINE reads the CLS token of each
    clip_heads: int = 16  # CLIP attention heads
    clip_intermediate: int = 4096  # CLIP MLP width
    patch_size: int = 14  # CLIP patch side: the SSCA map is (input_size / patch_size) cells square
    proj_dim: int = 128  # d: width of the RINE projections and of the SSCA tokens (RINE's default)
    embed_dim: int = 128  # e: width of the contrastive embedding
    channel_reduction: int = 4  # bottleneck of the spectral channel attention MLP
    spatial_kernel: int = 7  # conv kernel of the spatial attention map
    attn_heads: int = 4  # heads of the RINE-over-SSCA cross-attention
    gate_hidden: int = 256  # hidden width of the gated MLP
    dropout: float = 0.1  # dropout after Q1 and inside the gated MLP
    pretrained: bool = False  # load pretrained CLIP weights (local only, see backbones.py)
    weights: str | None = None  # saved CLIP directory or hub id in the local cache; None: CLIP ViT-L/14

    def clip_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.clip_hidden,
            num_hidden_layers=self.clip_layers,
            num_attention_heads=self.clip_heads,
            intermediate_size=self.clip_intermediate,
            image_size=self.input_size,
            patch_size=self.patch_size,
        )


class SSCA(nn.Module):
    """Patch tokens ``[B, N, D]`` to attention-modulated map cells as tokens ``[B, N, d]``."""

    def __init__(self, in_dim: int, dim: int, grid: int, reduction: int, kernel: int):
        super().__init__()
        self.grid = grid
        self.reduce = nn.Conv2d(in_dim, dim, 1)
        hidden = max(dim // reduction, 1)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.spatial_conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, n, d = patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        x = self.reduce(grid)  # [B, d, g, g]
        # Spectral channel attention: how much each channel's spectrum carries.
        channel = torch.sigmoid(self.channel_mlp(spectrum_magnitude_mean(x)))[:, :, None, None]
        # Spatial attention: where in the image, from channel mean and max.
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        spatial = torch.sigmoid(self.spatial_conv(pooled))  # [B, 1, g, g]
        x = x * channel * spatial
        return x.flatten(2).transpose(1, 2) + self.pos


class GatedMLP(nn.Module):
    """``out(sigmoid(gate(z)) * value(z))``: a GLU whose gate lets each branch's evidence through or not."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.gate = nn.Linear(in_dim, hidden)
        self.value = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.sigmoid(self.gate(z)) * self.value(z)))


class RineSSCA(nn.Module):
    """Returns ``{"logit": [B], "embedding": [B, e]}``; fake = 1. The CLIP tower is frozen."""

    def __init__(self, config: RineSSCAConfig):
        super().__init__()
        self.config = config
        self.backbone = backbones.clip_vision(config.clip_config(), config.pretrained, config.weights)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        width, d = config.clip_hidden, config.proj_dim

        self.q1 = nn.Sequential(nn.Linear(width, d), nn.ReLU(inplace=True), nn.Dropout(config.dropout))
        # Trainable Importance Estimator: a weight per (layer, channel), softmax over layers.
        self.importance = nn.Parameter(torch.zeros(1, config.clip_layers, d))
        self.q2 = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d))

        grid = config.input_size // config.patch_size
        self.ssca = SSCA(width, d, grid, config.channel_reduction, config.spatial_kernel)
        self.cross = nn.MultiheadAttention(d, config.attn_heads, batch_first=True)
        self.norm = nn.LayerNorm(2 * d)
        self.mix = GatedMLP(2 * d, config.gate_hidden, d, config.dropout)
        self.classifier = nn.Linear(d, 1)
        self.representation = nn.Linear(d, config.embed_dim)

    def train(self, mode: bool = True) -> RineSSCA:
        """Training mode for the head only: the frozen tower stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # No grad needed here: the tower's parameters and the input do not require it.
        hidden = self.backbone(pixel_values=x, output_hidden_states=True).hidden_states[1:]
        cls = torch.stack([h[:, 0] for h in hidden], dim=1)  # [B, L, D]
        layer_tokens = self.q1(cls)  # [B, L, d]
        rine = self.q2((self.importance.softmax(dim=1) * layer_tokens).sum(dim=1))  # [B, d]

        ssca_tokens = self.ssca(hidden[-1][:, 1:])  # [B, N, d]
        attended, _ = self.cross(rine.unsqueeze(1), ssca_tokens, ssca_tokens, need_weights=False)
        z = self.mix(self.norm(torch.cat([rine, attended.squeeze(1)], dim=-1)))  # [B, d]

        logit = self.classifier(z).squeeze(-1)
        embedding = F.normalize(self.representation(z), dim=-1)
        return {"logit": logit, "embedding": embedding}
