"""Dual-branch detector: a ViT on pixels, conv stacks on radial frequency bands, cross-attention fusion.

Corrections to the seed design (each tested):
- the band masks are centred on the zero frequency (``band_centre="zero"``),
  so the lowest band holds the lowest frequencies; ``"seed"`` keeps the
  seed's off-centre masks for comparison;
- the masks are a buffer built once, not rebuilt by Python loops per forward;
- cross-attention runs over many tokens per modality (the seed attended over
  one key, where softmax is 1 and attention reduces to a fixed linear map):
  the spatial CLS token attends over every band's feature-map cells, and a
  frequency summary token attends over the ViT's patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from specdet.errors import SpecdetError
from specdet.models import backbones
from specdet.models.spectral import CENTRES, band_split, default_band_edges, radial_band_masks


@dataclass(frozen=True)
class DualBranchConfig:
    input_size: int = 224  # square input side; the band masks and the ViT are built for it
    vit_name: str = "vit_base_patch16_224"  # timm architecture of the spatial branch
    vit_embed_dim: int = 768  # ViT width
    vit_depth: int = 12  # ViT blocks
    vit_heads: int = 12  # ViT attention heads
    num_bands: int = 4  # radial frequency bands, of equal radial width
    band_centre: str = "zero"  # "zero": corrected masks; "seed": the seed's off-centre masks
    freq_channels: tuple[int, ...] = (32, 64, 128, 256)  # per-band conv widths, one stride-2 stage each
    freq_grid: int = 7  # side of each band's pooled feature map: num_bands * freq_grid**2 frequency tokens
    fusion_dim: int = 256  # width of the cross-attention fusion
    fusion_heads: int = 8  # heads of each cross-attention
    dropout: float = 0.1  # dropout in the fusion head
    pretrained: bool = False  # load pretrained ViT weights (local only, see backbones.py)
    weights: str | None = None  # local ViT weight file; None: the Hugging Face cache

    def __post_init__(self) -> None:
        if self.band_centre not in CENTRES:
            raise SpecdetError(f"band_centre must be one of {CENTRES}, got {self.band_centre!r}")
        side = self.input_size >> len(self.freq_channels)
        if side << len(self.freq_channels) != self.input_size or side % self.freq_grid:
            raise SpecdetError(
                f"input_size {self.input_size} halved {len(self.freq_channels)} times must be a multiple "
                f"of freq_grid {self.freq_grid}; change freq_channels or freq_grid"
            )


class FrequencyBranch(nn.Module):
    """Image to radial bands to one conv stack per band: tokens ``[B, K * g * g, C]``.

    The per-band stacks are one grouped convolution (groups = bands): the
    same computation as K separate stacks, in one op per stage.
    """

    def __init__(self, config: DualBranchConfig):
        super().__init__()
        self.edges = default_band_edges(config.num_bands)
        self.centre = config.band_centre
        self.num_bands = config.num_bands
        masks = radial_band_masks(config.input_size, config.input_size, self.edges, self.centre)
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer("masks", masks, persistent=False)
        k, c_in, layers = config.num_bands, 3, []
        for c_out in config.freq_channels:
            layers += [
                nn.Conv2d(k * c_in, k * c_out, 3, stride=2, padding=1, groups=k, bias=False),
                nn.BatchNorm2d(k * c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        layers.append(nn.AdaptiveAvgPool2d(config.freq_grid))
        self.stacks = nn.Sequential(*layers)
        self.width = c_in

    def bands(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` to ``[B, K, 3, H, W]``, summing back to ``x``."""
        return band_split(x, self.masks, self.edges, self.centre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        maps = self.stacks(self.bands(x).flatten(1, 2))  # band-major channels: [B, K * C, g, g]
        maps = maps.reshape(b, self.num_bands, self.width, -1)  # [B, K, C, g * g]
        return maps.transpose(2, 3).reshape(b, -1, self.width)  # [B, K * g * g, C]


class DualBranch(nn.Module):
    """Returns ``{"logit", "spatial_logit", "frequency_logit"}``, each ``[B]``; fake = 1."""

    def __init__(self, config: DualBranchConfig):
        super().__init__()
        self.config = config
        self.vit = backbones.vit(
            config.vit_name,
            config.pretrained,
            config.weights,
            img_size=config.input_size,
            embed_dim=config.vit_embed_dim,
            depth=config.vit_depth,
            num_heads=config.vit_heads,
        )
        self.frequency = FrequencyBranch(config)
        d, c, f = config.vit_embed_dim, self.frequency.width, config.fusion_dim
        num_freq_tokens = config.num_bands * config.freq_grid**2

        # Auxiliary heads: each branch alone, so each learns on its own signal.
        self.spatial_head = nn.Linear(d, 1)
        self.frequency_head = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 1))

        # Fusion: each modality's summary token queries the other's tokens.
        self.spatial_query = nn.Linear(d, f)
        self.patch_proj = nn.Linear(d, f)
        self.frequency_query = nn.Linear(c, f)
        self.frequency_proj = nn.Linear(c, f)
        # Which band and which cell each frequency token comes from.
        self.frequency_pos = nn.Parameter(torch.zeros(1, num_freq_tokens, f))
        nn.init.trunc_normal_(self.frequency_pos, std=0.02)
        self.spatial_to_frequency = nn.MultiheadAttention(f, config.fusion_heads, batch_first=True)
        self.frequency_to_spatial = nn.MultiheadAttention(f, config.fusion_heads, batch_first=True)
        self.fusion_head = nn.Sequential(
            nn.LayerNorm(2 * f),
            nn.Linear(2 * f, f),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(f, 1),
        )
        # Softmax-weighted final head over [fusion, spatial, frequency]; starts as their mean.
        self.head_weights = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.vit.forward_features(x)  # [B, prefix + N, D], normed
        cls, patches = tokens[:, 0], tokens[:, self.vit.num_prefix_tokens :]
        freq = self.frequency(x)  # [B, M, C]
        freq_pooled = freq.mean(dim=1)  # [B, C]

        spatial_logit = self.spatial_head(cls).squeeze(-1)
        frequency_logit = self.frequency_head(freq_pooled).squeeze(-1)

        q_spatial = self.spatial_query(cls).unsqueeze(1)  # [B, 1, F]
        q_frequency = self.frequency_query(freq_pooled).unsqueeze(1)  # [B, 1, F]
        freq_kv = self.frequency_proj(freq) + self.frequency_pos  # [B, M, F]
        patch_kv = self.patch_proj(patches)  # [B, N, F]; the ViT already encoded positions
        s2f, _ = self.spatial_to_frequency(q_spatial, freq_kv, freq_kv, need_weights=False)
        f2s, _ = self.frequency_to_spatial(q_frequency, patch_kv, patch_kv, need_weights=False)
        fused = torch.cat([q_spatial + s2f, q_frequency + f2s], dim=-1).squeeze(1)  # [B, 2F]
        fusion_logit = self.fusion_head(fused).squeeze(-1)

        logits = torch.stack([fusion_logit, spatial_logit, frequency_logit], dim=-1)  # [B, 3]
        logit = (logits * self.head_weights.softmax(dim=0)).sum(dim=-1)
        return {"logit": logit, "spatial_logit": spatial_logit, "frequency_logit": frequency_logit}
