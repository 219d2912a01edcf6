"""Pixel shuffle and the `mlp1` projector: ViT patch grid -> LLM-width image tokens (spec section 1).

Pixel shuffle trades spatial resolution for channels (32x32xC -> 16x16x4C at ratio 0.5), cutting a tile
from 1024 to 256 tokens. `ps_version` "v1" leaves the grid transposed (old checkpoints were trained that
way), "v2" swaps it back. `mlp1` is LayerNorm -> Linear -> GELU -> Linear with the official indices 0/1/3.
"""

from __future__ import annotations

import torch
from torch import nn


def pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5, ps_version: str = "v2") -> torch.Tensor:
    """(N, W, H, C) -> (N, H*s, W*s, C/s^2) for v1, or its spatial transpose back for v2."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3)  # (N, H*s, W, C/s)
    x = x.reshape(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    if ps_version == "v1":
        return x
    return x.permute(0, 2, 1, 3)


def build_mlp1(vit_hidden: int, llm_hidden: int, downsample_ratio: float) -> nn.Sequential:
    """The projector, as an `nn.Sequential` so its keys are the official `mlp1.0/1/3`."""
    dim = vit_hidden * int(round(1 / downsample_ratio)) ** 2
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))


def project(vit_tokens: torch.Tensor, mlp1: nn.Module, downsample_ratio: float, ps_version: str) -> torch.Tensor:
    """Patch tokens without the class token (N, h*w, C) -> image tokens (N, h*w*r^2, D_llm)."""
    n, t, c = vit_tokens.shape
    side = int(t ** 0.5)
    if side * side != t:
        raise ValueError(f"vision tokens {t} do not form a square grid")
    grid = pixel_shuffle(vit_tokens.reshape(n, side, side, c), downsample_ratio, ps_version)
    return mlp1(grid.reshape(n, -1, grid.shape[-1]))
