"""Building blocks shared by the vision tower and the decoder: RMSNorm, rotary tables, SwiGLU, attention.

Spec section 1. Only math: no I/O, no tokenizer. RoPE covers the scaling variants the official presets
use: default, linear, dynamic NTK (InternLM2.5), llama3, LongRoPE (Phi-3-128k) and YaRN (GPT-OSS).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLMConfig
from ..kernels import linear


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back before the weight, as every InternVL backbone does.

    `weight_in_fp32`: multiply by the weight in fp32 too and cast after (GPT-OSS keeps its norms in fp32).
    """

    def __init__(self, dim: int, eps: float = 1e-6, weight_in_fp32: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.weight_in_fp32 = weight_in_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        if self.weight_in_fp32:
            return (self.weight.float() * normed).to(x.dtype)
        return self.weight * normed.to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), the feed-forward of every supported LLM."""

    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(F.silu(linear(x, self.gate_proj)) * linear(x, self.up_proj), self.down_proj)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions, with the RoPE scaling variant named in the config."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.dim_per_head
        scaling = cfg.rope_scaling or {}
        self.rope_type = scaling.get("rope_type", "default")
        if self.rope_type not in ("default", "linear", "dynamic", "llama3", "longrope", "yarn"):
            raise NotImplementedError(f"RoPE scaling {self.rope_type!r} is not implemented")
        self.attention_scaling = 1.0
        if self.rope_type == "yarn":
            self.attention_scaling = _yarn_attention_factor(scaling, cfg.max_position_embeddings)
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
        if self.rope_type == "yarn":
            return _yarn_inv_freq(cfg.rope_theta, self.dim, s, cfg.max_position_embeddings)
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


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_factor(s: dict, max_position_embeddings: int) -> float:
    orig = s.get("original_max_position_embeddings") or max_position_embeddings
    return s.get("factor") or max_position_embeddings / orig


def _yarn_attention_factor(s: dict, max_position_embeddings: int) -> float:
    """YaRN's cos/sin gain: 0.1 ln(factor) + 1 (about 1.3466 for GPT-OSS's factor 32) unless given."""
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    factor = _yarn_factor(s, max_position_embeddings)
    if s.get("mscale") and s.get("mscale_all_dim"):
        return _yarn_mscale(factor, s["mscale"]) / _yarn_mscale(factor, s["mscale_all_dim"])
    return _yarn_mscale(factor)


def _yarn_inv_freq(base: float, dim: int, s: dict, max_position_embeddings: int) -> torch.Tensor:
    """YaRN (arXiv 2309.00071): interpolate the low frequencies by `factor`, keep the high ones, ramp between.

    The ramp's ends are the dimensions that turn `beta_fast` / `beta_slow` times over the original context;
    `truncate: false` (GPT-OSS) keeps them fractional instead of flooring / ceiling them.
    """
    orig = s.get("original_max_position_embeddings") or max_position_embeddings
    factor = _yarn_factor(s, max_position_embeddings)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    return interpolation * (1 - keep) + extrapolation * keep


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

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal_attention=None) -> torch.Tensor:
        """q (B, H, T, D), k/v (B, Hkv, T, D) -> (B, H, T, D); zeros at padding positions.

        `causal_attention(q, k, v)`: the per-sample attention (default: causal SDPA), e.g. one with sinks.
        """
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

            parts = [per_sample(x) for x in flat]
            if causal_attention is not None:
                out = causal_attention(*parts)
            else:
                out = F.scaled_dot_product_attention(*parts, is_causal=True,
                                                     enable_gqa=k.shape[1] != q.shape[1])  # (n, H, width, D)
            out = out.transpose(1, 2).reshape(n * width, out.shape[1], out.shape[3])
            outs.append(out if slot is None else out.index_select(0, slot))
            srcs.append(src)
        b, t = self.shape
        # the result takes the attention's dtype, not q's: under CUDA autocast SDPA returns bf16 for fp32 q
        rows = torch.cat(outs)
        packed = rows.new_zeros(b * t, q.shape[1], q.shape[3]).index_copy(0, torch.cat(srcs), rows)
        return packed.view(b, t, q.shape[1], q.shape[3]).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | Segments | None,
              is_causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention; q (B, H, T, D), k/v (B, Hkv, S, D); grouped KV heads are expanded.

    `mask` is a boolean (B, 1, T, S) tensor (True = attend), None, or `Segments` for packed training rows.
    """
    if isinstance(mask, Segments):
        return mask.attend(q, k, v)
    # torch's CPU SDPA is ~8x slower for one bf16 query than for fp32 (1.9 against 0.2 ms per layer over 800
    # cached keys: 50 ms of a decode step with one image in context); widening the cache costs less and keeps
    # the scores in fp32 (bf16 scores would lose ~0.1 on logits of ~40)
    widen = q.shape[2] == 1 and q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
    qs, ks, vs = (q.float(), k.float(), v.float()) if widen else (q, k, v)
    # grouped KV heads are shared by SDPA itself (no repeated copy of the cache per step)
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=is_causal and mask is None,
                                         enable_gqa=k.shape[1] != q.shape[1])
    return out.to(q.dtype) if widen else out


# Scores held at once by `sink_attention` (elements); queries are processed in chunks below this.
SINK_CHUNK_ELEMENTS = 1 << 25


def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                   mask: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
    """Attention with a learned per-head sink (GPT-OSS): one extra softmax column holding `sinks[h]`,
    dropped after the softmax, so a head can attend to "nothing". q (B, H, T, D), k/v (B, Hkv, S, D).

    Index space: query i is key S - T + i. `mask` (B|1, 1, T, S) boolean (True = attend) replaces causality
    when given; otherwise causal. `window` additionally limits query i to keys i - window < j <= i (counted
    in index space, as transformers' sliding-window mask). SDPA cannot add the sink column, so scores are
    formed explicitly, in query chunks that bound memory; a window also bounds the keys each chunk reads.
    """
    b, h, t, d = q.shape
    s, hkv = k.shape[2], k.shape[1]
    g = h // hkv
    offset = s - t
    scale = d ** -0.5
    qg = q.reshape(b, hkv, g, t, d)
    sink = sinks.float().view(1, hkv, g, 1, 1)
    chunk = max(1, SINK_CHUNK_ELEMENTS // max(1, b * h * (min(s, window + t) if window else s)))
    outs = []
    for a in range(0, t, chunk):
        e = min(t, a + chunk)
        k0 = max(0, offset + a - window + 1) if window else 0
        k1 = offset + e if mask is None else s
        kc, vc = k[:, :, None, k0:k1], v[:, :, None, k0:k1]
        scores = torch.matmul(qg[:, :, :, a:e], kc.transpose(-1, -2)).float() * scale  # (B, Hkv, G, c, k)
        qi = torch.arange(offset + a, offset + e, device=q.device)[:, None]
        kj = torch.arange(k0, k1, device=q.device)[None, :]
        allowed = (kj <= qi) if mask is None else mask[:, :, a:e, k0:k1].unsqueeze(2)
        if window:
            allowed = allowed & (kj > qi - window)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(torch.cat([scores, sink.expand(*scores.shape[:-1], 1)], dim=-1), dim=-1)[..., :-1]
        outs.append(torch.matmul(probs.to(v.dtype), vc))
    return torch.cat(outs, dim=3).reshape(b, h, t, d)
