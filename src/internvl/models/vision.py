"""InternViT, the vision encoder of every InternVL release (spec section 1).

Patch embedding (conv, stride = patch) plus a class token and learned absolute positions, bicubically
interpolated when tiles are not the trained size; pre-norm blocks with layer scale (`ls1`, `ls2`). The
300M family uses LayerNorm and qkv bias; the 6B family RMSNorm, qk-normalization over the full width and no
qkv bias. Parameter names equal the official checkpoint's (`embeddings.*`, `encoder.layers.{i}.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from ..precision import compute_dtype
from .layers import RMSNorm


def _norm(cfg: VisionConfig, dim: int) -> nn.Module:
    if cfg.norm_type == "rms_norm":
        return RMSNorm(dim, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps)


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, c))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, c, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, cfg.num_positions, c))

    def positions(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """Position table for an h x w patch grid -> (1, 1 + h*w, C)."""
        n = self.cfg.image_size // self.cfg.patch_size
        pos = self.position_embedding
        if (h, w) == (n, n):
            return pos.to(dtype)
        grid = pos[:, 1:].float().reshape(1, n, n, -1).permute(0, 3, 1, 2)  # (1, C, n, n)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.reshape(1, -1, h * w).permute(0, 2, 1).to(dtype)
        return torch.cat([pos[:, :1].to(dtype), grid], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, 3, H, W) -> tokens (N, 1 + H/p * W/p, C)."""
        x = self.patch_embedding(pixel_values.to(compute_dtype(self.patch_embedding.weight.dtype)))  # (N, C, h, w)
        n, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(n, -1, -1)
        return torch.cat([cls, x], dim=1) + self.positions(h, w, x.dtype)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        c = cfg.hidden_size
        self.qkv = nn.Linear(c, 3 * c, bias=cfg.qkv_bias)
        self.qk_normalization = cfg.qk_normalization
        if cfg.qk_normalization:
            self.q_norm = RMSNorm(c, eps=cfg.layer_norm_eps)
            self.k_norm = RMSNorm(c, eps=cfg.layer_norm_eps)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, T, C)
        if self.qk_normalization:  # normalized over all heads together, not per head
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, D)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        if cfg.hidden_act != "gelu":
            raise NotImplementedError(f"vision hidden_act {cfg.hidden_act!r}")
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(cfg, cfg.hidden_size)
        self.attn = VisionAttention(cfg)
        self.norm2 = _norm(cfg, cfg.hidden_size)
        self.mlp = VisionMLP(cfg)
        self.ls1 = nn.Parameter(cfg.initializer_factor * torch.ones(cfg.hidden_size))
        self.ls2 = nn.Parameter(cfg.initializer_factor * torch.ones(cfg.hidden_size))
        self.drop_path = drop_path

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # stochastic depth: drop the whole residual branch per sample while training
        if not self.training or self.drop_path == 0.0:
            return x
        keep = x.new_empty(x.shape[0], 1, 1).bernoulli_(1 - self.drop_path)
        return x * keep / (1 - self.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._drop(self.ls1 * self.attn(self.norm1(x)))
        return x + self._drop(self.ls2 * self.mlp(self.norm2(x)))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        n = cfg.num_hidden_layers  # linearly increasing drop-path rate, as the official encoder
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.layers = nn.ModuleList(VisionLayer(cfg, r) for r in rates)


class InternViT(nn.Module):
    """InternViT encoder. `forward` returns the hidden state picked by `select_layer` (class token included)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)
        self.gradient_checkpointing = False

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -1) -> torch.Tensor:
        """pixel_values (N, 3, H, W) -> (N, 1 + patches, C).

        `select_layer` indexes the hidden states as the official model does: index 0 is the embedding
        output, index i the output of layer i, -1 the last layer.
        """
        n_layers = len(self.encoder.layers)
        stop = select_layer % (n_layers + 1)  # hidden-state index to return
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers[:stop]:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x
