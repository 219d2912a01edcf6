"""Sparse mixture-of-experts feed-forward (Qwen3-MoE: InternVL3.5-30B-A3B and -241B-A28B), spec section 1.

A linear router scores the experts, softmax in fp32, the top-k are kept (optionally renormalized) and each
token's output is the weighted sum of its experts' SwiGLU outputs. Experts are stored stacked, one
(E, 2I, H) gate/up tensor and one (E, H, I) down tensor, so a step touches only the experts it routes to.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLMConfig


class Router(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.weight = nn.Parameter(torch.zeros(cfg.num_experts, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, H) -> routing weights (N, k) in x's dtype and expert indices (N, k)."""
        probs = F.softmax(F.linear(x, self.weight), dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), experts


class Experts(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        def swiglu(e: int, xs: torch.Tensor) -> torch.Tensor:
            gate, up = F.linear(xs, self.gate_up_proj[e]).chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, self.down_proj[e])
        return run_experts(x, weights, experts, self.gate_up_proj.shape[0], swiglu)


def run_experts(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, num_experts: int,
                expert: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """sum over k of weights[:, k] * expert(experts[:, k], x) for x (N, H), weights and experts (N, k): the
    (token, expert) pairs are grouped by expert, so each expert runs once, over all its tokens (M, H) -> (M, H),
    experts in index order (also on GPU, where a stable sort keeps the grouping deterministic)."""
    out = torch.zeros_like(x)
    flat = experts.flatten()  # (N*k,)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    token_of = order // experts.shape[1]
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        sel, tok = order[start:start + n], token_of[start:start + n]
        start += n
        out.index_add_(0, tok, (expert(e, x[tok]) * weights.flatten()[sel, None]).to(out.dtype))
    return out


class SparseMoE(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, experts = self.gate(flat)
        return self.experts(flat, weights, experts).reshape(shape)
