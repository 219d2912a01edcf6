"""GPT-OSS's sparse feed-forward (InternVL3.5-GPT-OSS-20B-A4B), spec: shared/docs/internvl35.md section 3.1.

It differs from Qwen3-MoE (`moe.py`) in every detail, hence its own module:
- the router has a bias, keeps the top-k *logits* and softmaxes only those;
- experts are stored as the checkpoint has them, `x @ W` (gate_up (E, H, 2I), down (E, I, H)), with biases,
  and gate / up are interleaved columns (gate = even, up = odd);
- the activation is a clamped, scaled SwiGLU: gate <= limit, -limit <= up <= limit,
  (up + 1) * gate * sigmoid(alpha * gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLMConfig
from .moe import run_experts


class TopKRouter(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.weight = nn.Parameter(torch.zeros(cfg.num_experts, cfg.hidden_size))
        self.bias = nn.Parameter(torch.zeros(cfg.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, H) -> routing weights (N, k) and expert indices (N, k)."""
        top, experts = torch.topk(F.linear(x, self.weight, self.bias), self.top_k, dim=-1)
        return torch.softmax(top, dim=-1, dtype=top.dtype), experts


class Experts(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, h, 2 * i))
        self.gate_up_proj_bias = nn.Parameter(torch.empty(e, 2 * i))
        self.down_proj = nn.Parameter(torch.empty(e, i, h))
        self.down_proj_bias = nn.Parameter(torch.empty(e, h))
        self.alpha, self.limit = cfg.swiglu_alpha, cfg.swiglu_limit

    def activation(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate = gate_up[..., ::2].clamp(max=self.limit)
        up = gate_up[..., 1::2].clamp(min=-self.limit, max=self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        def expert(e: int, xs: torch.Tensor) -> torch.Tensor:
            hidden = self.activation(xs @ self.gate_up_proj[e] + self.gate_up_proj_bias[e])
            return hidden @ self.down_proj[e] + self.down_proj_bias[e]
        return run_experts(x, weights, experts, self.gate_up_proj.shape[0], expert)


class GptOssMoE(nn.Module):
    """Router + experts; the names (`router`, `experts`) are the checkpoint's."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.router = TopKRouter(cfg)
        self.experts = Experts(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, experts = self.router(flat)
        return self.experts(flat, weights, experts).reshape(shape)
