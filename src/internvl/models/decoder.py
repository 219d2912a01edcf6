"""The decoder LLM: one LLaMA-style transformer for Qwen2/2.5, Qwen3(-MoE), LLaMA, InternLM2/3, Phi-3 and GPT-OSS.

Spec section 1. The families differ only in flags (q/k/v bias, output bias, per-head qk-norm, tied
embeddings, RoPE scaling, sparse MoE layers; for GPT-OSS attention sinks, sliding-window layers, its own
MoE and fp32 norms); checkpoint code (`internvl.checkpoint`) maps their fused or renamed tensors (InternLM2
`wqkv`, Phi-3 `qkv_proj`/`gate_up_proj`) onto these plain projections, so the forward pass never branches on
the family name.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..config import LLMConfig
from ..kernels import linear
from ..kernels.layer import decode_layers
from .gpt_oss import GptOssMoE
from .layers import RMSNorm, RotaryEmbedding, Segments, SwiGLU, apply_rotary, attention, sink_attention
from .moe import SparseMoE


class KVCache(Protocol):
    """What the decoder needs from a cache: append this step's keys/values and return the whole past.

    A cache may also offer `update_window(layer, k, v, window) -> (k, v, mask)` for sliding-window layers:
    keys and values attention must see (e.g. a ring of the last `window` positions plus this step's) and their
    complete boolean mask, or mask None when the keys are exactly this step's, starting at index 0.
    """

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_per_head
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=cfg.attention_out_bias)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
        self.window = cfg.window(layer_idx)
        self.sinks = nn.Parameter(torch.zeros(self.n_heads)) if cfg.is_gpt_oss else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = linear(x, self.q_proj).view(b, t, self.n_heads, self.head_dim)
        k = linear(x, self.k_proj).view(b, t, self.n_kv, self.head_dim)
        v = linear(x, self.v_proj).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # (B, H, T, D)
        if self.sinks is not None:
            out = self._attend_with_sinks(q, k, v, mask, cache)
        else:
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)
            # causal only matters when queries see no past: with a cache and t > 1, causal_mask built one
            out = attention(q, k, v, mask, is_causal=t > 1 and k.shape[2] == t)
        return linear(out.transpose(1, 2).reshape(b, t, -1), self.o_proj)

    def _attend_with_sinks(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | Segments | None, cache: KVCache | None) -> torch.Tensor:
        window = self.window
        if isinstance(mask, Segments):
            return mask.attend(q, k, v, lambda qs, ks, vs: sink_attention(qs, ks, vs, self.sinks, None, window))
        if cache is not None:
            if window is not None and hasattr(cache, "update_window"):
                k, v, ring_mask = cache.update_window(self.layer_idx, k, v, window)
                if ring_mask is not None:  # positions, causality and the window are all in the cache's mask
                    return sink_attention(q, k, v, self.sinks, ring_mask)
            else:
                k, v = cache.update(self.layer_idx, k, v)
        return sink_attention(q, k, v, self.sinks, mask, window)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, weight_in_fp32=cfg.is_gpt_oss)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, weight_in_fp32=cfg.is_gpt_oss)
        if cfg.is_gpt_oss:
            self.mlp: nn.Module = GptOssMoE(cfg)
        elif cfg.is_moe_layer(layer_idx):
            self.mlp = SparseMoE(cfg)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Token embeddings -> N decoder layers -> final norm -> LM head (tied to the embeddings when configured)."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        if cfg.hidden_act != "silu":
            raise NotImplementedError(f"LLM hidden_act {cfg.hidden_act!r}")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, weight_in_fp32=cfg.is_gpt_oss)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # an inference-only replacement for a tied head (e.g. int8, see quantize.py); never saved
        self.tied_head: nn.Module | None = None
        self.rotary = RotaryEmbedding(cfg)
        self.gradient_checkpointing = False

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.lm_head if self.lm_head is not None else self.tied_head
        return linear(hidden, head if head is not None else self.embed_tokens)  # the embedding: a tied head

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """inputs_embeds (B, T, D), position_ids (B, T), boolean mask (B, 1, T, S) or None -> hidden (B, T, D).

        With `mask=None` and no cache the attention is plain causal.
        """
        cos, sin = self.rotary(position_ids, inputs_embeds.dtype)
        fused = decode_layers(self.layers, inputs_embeds, cos, sin, cache)  # a CPU decode step: one C call a layer
        if fused is not None:
            return self.norm(fused)
        x = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        return self.norm(x)


def causal_mask(attention_mask: torch.Tensor | None, q_len: int, past_len: int = 0) -> torch.Tensor | None:
    """Boolean (B, 1, T, S) mask from a (B, S) key-validity mask (1 = real token, 0 = padding).

    Returns None when nothing is padded and the plain causal path applies (no cache, or a one-token step).
    Padding queries attend to themselves so their (ignored) rows never become NaN.
    """
    if attention_mask is None or bool(attention_mask.all()):
        if past_len == 0 or q_len == 1:
            return None
        attention_mask = torch.ones(1, past_len + q_len, dtype=torch.bool)
    valid = attention_mask.bool()  # (B, S)
    s = valid.shape[1]
    q_pos = torch.arange(past_len, past_len + q_len, device=valid.device)[:, None]
    k_pos = torch.arange(s, device=valid.device)[None, :]
    mask = (k_pos <= q_pos)[None] & valid[:, None, :]  # (B, T, S)
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]
