"""Synthetic files of the published detectors, for tests: OpenAI-layout CLIP state dicts, released-layout heads,
and the reference computations written from the papers' code (OpenAI's clip/model.py, RINE's src/models.py,
UnivFD's models/clip_models.py) in plain torch, independent of specdet's transformers tower."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The tiny variants' tower (registry _TINY_TOWER): width 128, 2 blocks, 2 heads, MLP 256, patch 14 at 224.
TINY = dict(width=128, layers=2, heads=2, mlp=256, patch=14, grid=16, embed=32)
# CLIP ViT-B/16 as OpenAI releases it: another size, refused.
VIT_B16 = dict(width=768, layers=12, heads=12, mlp=3072, patch=16, grid=14, embed=512)


def openai_clip_state(width, layers, mlp, patch, grid, embed, seed=0, **_) -> dict[str, torch.Tensor]:
    """A random CLIP state dict under OpenAI's names (clip/model.py), with a token of its text tower."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    state = {
        "visual.class_embedding": rand(width, scale=1.0),
        "visual.positional_embedding": rand(grid * grid + 1, width, scale=0.5),
        "visual.proj": rand(width, embed, scale=width ** -0.5),
        "visual.conv1.weight": rand(width, 3, patch, patch),
        "visual.ln_pre.weight": 1 + rand(width), "visual.ln_pre.bias": rand(width),
        "visual.ln_post.weight": 1 + rand(width), "visual.ln_post.bias": rand(width),
        # The text tower is not used: a few of its tensors stand for it.
        "positional_embedding": rand(77, embed), "text_projection": rand(embed, embed), "logit_scale": rand(1),
        "transformer.resblocks.0.ln_1.weight": rand(embed),
    }
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        state |= {
            p + "attn.in_proj_weight": rand(3 * width, width), p + "attn.in_proj_bias": rand(3 * width),
            p + "attn.out_proj.weight": rand(width, width), p + "attn.out_proj.bias": rand(width),
            p + "ln_1.weight": 1 + rand(width), p + "ln_1.bias": rand(width),
            p + "ln_2.weight": 1 + rand(width), p + "ln_2.bias": rand(width),
            p + "mlp.c_fc.weight": rand(mlp, width), p + "mlp.c_fc.bias": rand(mlp),
            p + "mlp.c_proj.weight": rand(width, mlp), p + "mlp.c_proj.bias": rand(width),
        }
    return state


def openai_vision(state: dict, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenAI's VisionTransformer.forward on ``state``: the CLS token of every block's ln_2 output ``[B, L, D]`` (what
    RINE's hooks read, sequence-first token 0) and the image embedding ``[B, E]`` (what UnivFD reads)."""
    width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    x = F.conv2d(x, state["visual.conv1.weight"], stride=patch).flatten(2).permute(0, 2, 1)
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, width)
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, (width,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    x = x.permute(1, 0, 2)  # NLD -> LND, as OpenAI's transformer runs
    taps = []
    layers = sum(1 for k in state if k.endswith("attn.in_proj_weight"))
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        attended, _ = F.multi_head_attention_forward(
            h, h, h, width, heads, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"], None, None, False,
            0.0, state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"], need_weights=False)
        x = x + attended
        t = F.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        taps.append(t[0])
        hidden = F.linear(t, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
        x = x + F.linear(hidden * torch.sigmoid(1.702 * hidden), state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    x = x.permute(1, 0, 2)
    pooled = F.layer_norm(x[:, 0], (width,), state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    return torch.stack(taps, dim=1), pooled @ state["visual.proj"]


def rine_head_state(layers: int, width: int, nproj: int, dim: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """A random head under the released RINE files' names and shapes (ckpt/model_*_trainable.pth)."""
    g = torch.Generator().manual_seed(seed)
    state = {"alpha": torch.randn(1, layers, dim, generator=g)}
    for name in ("proj1", "proj2"):
        for i in range(nproj):
            fan_in = width if name == "proj1" and i == 0 else dim
            state[f"{name}.{1 + 3 * i}.weight"] = torch.randn(dim, fan_in, generator=g) * (2 / fan_in) ** 0.5
            state[f"{name}.{1 + 3 * i}.bias"] = torch.randn(dim, generator=g) * 0.1
    for index, out in ((0, dim), (3, dim), (6, 1)):
        state[f"head.{index}.weight"] = torch.randn(out, dim, generator=g) * (2 / dim) ** 0.5
        state[f"head.{index}.bias"] = torch.randn(out, generator=g) * 0.1
    return state


def rine_reference(head: dict, taps: torch.Tensor) -> torch.Tensor:
    """RINE's Model.forward after the hooks, in eval mode (dropout off): the logit ``[B]``."""
    def stages(name, x):
        i = 1
        while f"{name}.{i}.weight" in head:
            x = F.relu(F.linear(x, head[f"{name}.{i}.weight"], head[f"{name}.{i}.bias"]))
            i += 3
        return x

    z = stages("proj2", (torch.softmax(head["alpha"], dim=1) * stages("proj1", taps)).sum(dim=1))
    z = F.relu(F.linear(z, head["head.0.weight"], head["head.0.bias"]))
    z = F.relu(F.linear(z, head["head.3.weight"], head["head.3.bias"]))
    return F.linear(z, head["head.6.weight"], head["head.6.bias"])[:, 0]


def univfd_head_state(embed: int, seed: int = 2) -> dict[str, torch.Tensor]:
    """A random head under the released UnivFD file's names and shapes (pretrained_weights/fc_weights.pth)."""
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(1, embed, generator=g) * embed ** -0.5, "bias": torch.randn(1, generator=g)}
