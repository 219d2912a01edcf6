"""Building blocks shared by the vision tower and the decoder: RMSNorm, rotary tables, SwiGLU, attention.

Spec section 1. Only math: no I/O, no tokenizer. RoPE covers the scaling variants the official presets
use: default, linear, dynamic NTK (InternLM2.5), llama3, and LongRoPE (Phi-3-128k).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLMConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back before the weight, as every InternVL backbone does."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), the feed-forward of every supported LLM."""

    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions, with the RoPE scaling variant named in the config."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.dim_per_head
        scaling = cfg.rope_scaling or {}
        self.rope_type = scaling.get("rope_type", "default")
        if self.rope_type not in ("default", "linear", "dynamic", "llama3", "longrope"):
            raise NotImplementedError(f"RoPE scaling {self.rope_type!r} is not implemented")
        self.attention_scaling = 1.0
        if self.rope_type == "longrope":
            orig = scaling.get("original_max_position_embeddings") or cfg.original_max_position_embeddings
            self.original_max = orig or cfg.max_position_embeddings
            factor = scaling.get("factor") or cfg.max_position_embeddings / self.original_max
            self.attention_scaling = scaling.get("attention_factor") or (
                1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(self.original_max)))
        self.register_buffer("inv_freq", self._inv_freq(None), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the table (after the module was built on the meta device)."""
        self.inv_freq = self._inv_freq(None)

    def _base_inv_freq(self, base: float) -> torch.Tensor:
        return 1.0 / (base ** (torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim))

    def _inv_freq(self, seq_len: int | None) -> torch.Tensor:
        cfg, s = self.cfg, self.cfg.rope_scaling or {}
        if self.rope_type == "linear":
            return self._base_inv_freq(cfg.rope_theta) / s["factor"]
        if self.rope_type == "dynamic":
            base = cfg.rope_theta
            if seq_len is not None and seq_len > cfg.max_position_embeddings:
                # NTK-aware: stretch the base once the sequence passes the trained length
                f = s["factor"]
                base = base * ((f * seq_len / cfg.max_position_embeddings) - (f - 1)) ** (self.dim / (self.dim - 2))
            return self._base_inv_freq(base)
        if self.rope_type == "llama3":
            return _llama3_inv_freq(self._base_inv_freq(cfg.rope_theta), s)
        if self.rope_type == "longrope":
            long = seq_len is not None and seq_len > self.original_max
            ext = torch.tensor(s["long_factor"] if long else s["short_factor"], dtype=torch.float32)
            return 1.0 / (ext * cfg.rope_theta ** (torch.arange(0, self.dim, 2).float() / self.dim))
        return self._base_inv_freq(cfg.rope_theta)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin (B, T, head_dim) in `dtype`."""
        inv_freq = self.inv_freq
        if self.rope_type in ("dynamic", "longrope"):
            # the table depends on how long the sequence has become
            seq_len = int(position_ids.max()) + 1
            inv_freq = self._inv_freq(seq_len).to(position_ids.device)
        freqs = position_ids[..., None].float() * inv_freq.float()  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, H, T, D); cos, sin (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class Segments:
    """Packed rows (several samples back to back per row) seen by attention as one row per sample.

    A dense block-diagonal mask costs attention over whole rows (T^2 per row) however short the samples are.
    Here each sample is gathered into a row of its own and plain causal attention runs with no mask (a sample
    starts its row, padding only trails it). Samples of similar length share one attention call: sorted by
    length, a group takes samples down to `min_fill` of its longest, so padding stays small and the number of
    calls too. Built on the CPU from the batch's sample ids (no device sync); pass it where the decoder takes
    `mask`.
    """

    def __init__(self, seq_ids: torch.Tensor, min_fill: float = 0.8) -> None:
        """seq_ids (B, T): index of the sample within its row, -1 on padding; each sample contiguous."""
        b, t = seq_ids.shape
        flat = (seq_ids >= 0).flatten().nonzero().squeeze(1)  # packed positions of the real tokens, in order
        key = torch.div(flat, t, rounding_mode="floor") * (t + 1) + seq_ids.flatten()[flat]  # (row, sample)
        counts = torch.unique_consecutive(key, return_counts=True)[1].tolist()
        starts = [0]
        for c in counts[:-1]:
            starts.append(starts[-1] + c)
        order = sorted(range(len(counts)), key=lambda i: -counts[i])
        self.shape = (b, t)
        self.groups: list[tuple[int, int, torch.Tensor, torch.Tensor | None]] = []  # (n, width, src, slot)
        i = 0
        while i < len(order):
            width = counts[order[i]]
            j = i + 1
            while j < len(order) and counts[order[j]] >= min_fill * width:
                j += 1
            members = order[i:j]
            src = torch.cat([flat[starts[m]:starts[m] + counts[m]] for m in members])
            padded = any(counts[m] != width for m in members)
            slot = torch.cat([k * width + torch.arange(counts[m]) for k, m in enumerate(members)]) if padded else None
            self.groups.append((len(members), width, src, slot))
            i = j

    def to(self, device: torch.device | str) -> Segments:
        self.groups = [(n, w, src.to(device), None if slot is None else slot.to(device))
                       for n, w, src, slot in self.groups]
        return self

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, D), k/v (B, Hkv, T, D) -> (B, H, T, D); zeros at padding positions."""
        if not self.groups:
            return torch.zeros_like(q)
        flat = [x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3]) for x in (q, k, v)]  # (B*T, h, D) each
        outs, srcs = [], []
        for n, width, src, slot in self.groups:
            def per_sample(x: torch.Tensor) -> torch.Tensor:  # (B*T, h, D) -> (n, h, width, D)
                rows = x.index_select(0, src)
                if slot is not None:
                    rows = x.new_zeros(n * width, x.shape[1], x.shape[2]).index_copy(0, slot, rows)
                return rows.view(n, width, x.shape[1], x.shape[2]).transpose(1, 2)

            out = F.scaled_dot_product_attention(*(per_sample(x) for x in flat), is_causal=True,
                                                 enable_gqa=k.shape[1] != q.shape[1])  # (n, H, width, D)
            out = out.transpose(1, 2).reshape(n * width, out.shape[1], out.shape[3])
            outs.append(out if slot is None else out.index_select(0, slot))
            srcs.append(src)
        b, t = self.shape
        packed = q.new_zeros(b * t, q.shape[1], q.shape[3]).index_copy(0, torch.cat(srcs), torch.cat(outs))
        return packed.view(b, t, q.shape[1], q.shape[3]).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | Segments | None,
              is_causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention; q (B, H, T, D), k/v (B, Hkv, S, D); grouped KV heads are expanded.

    `mask` is a boolean (B, 1, T, S) tensor (True = attend), None, or `Segments` for packed training rows.
    """
    if isinstance(mask, Segments):
        return mask.attend(q, k, v)
    # grouped KV heads are shared by SDPA itself (no repeated copy of the cache per step)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                          enable_gqa=k.shape[1] != q.shape[1])
