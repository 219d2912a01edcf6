"""A plain generation loop: prefill once, then one token per step with a growing KV cache.

This is the simple, obviously-correct path `chat()` uses until the fast engine lands; it doubles as the
reference the engine is tested against. Greedy by default; sampling with temperature, top-k and top-p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models.internvl import InternVL


class DynamicCache:
    """Per-layer keys/values concatenated along the sequence axis: (B, Hkv, S, D)."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.keys:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


@dataclass
class SamplingConfig:
    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int | list[int] | None = None
    pad_token_id: int = 0
    seed: int | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> SamplingConfig:
        """Accept the official `generation_config` dict; unknown keys (e.g. num_beams=1) are ignored."""
        d = dict(d or {})
        if d.get("num_beams", 1) != 1:
            raise ValueError("beam search is not supported; use num_beams=1")
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None}
        return cls(**fields)


def _sample(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next tokens (B,)."""
    if not cfg.do_sample or cfg.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > cfg.top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model: InternVL, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             pixel_values: torch.Tensor | None = None, cfg: SamplingConfig | None = None) -> torch.Tensor:
    """input_ids (B, T) -> generated ids (B, N) without the prompt; finished rows are padded."""
    cfg = cfg or SamplingConfig()
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    b, t = input_ids.shape
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    eos_t = torch.tensor([e for e in eos if e is not None], dtype=torch.long, device=device)
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    cache = DynamicCache()
    if pixel_values is not None:
        pixel_values = pixel_values.to(device)
    # V2PE positions are not the token count: track them (without V2PE the mask's running count is the same)
    v2pe = model.config.v2pe_stride is not None
    positions = model.rope_positions(input_ids, mask) if v2pe else None
    logits = model(input_ids, pixel_values, attention_mask=mask, cache=cache, position_ids=positions).logits[:, -1]
    next_position = positions[:, -1:] + 1 if v2pe else None
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out = []
    for step in range(cfg.max_new_tokens):
        nxt = _sample(logits, cfg, generator)
        nxt = torch.where(done, torch.full_like(nxt, cfg.pad_token_id), nxt)
        out.append(nxt)
        done |= torch.isin(nxt, eos_t)
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], dim=1)
        # generated tokens are plain text even if one happens to be <IMG_CONTEXT>: embed them directly
        embeds = model.language_model.embed_tokens(nxt[:, None])
        logits = model(nxt[:, None], attention_mask=mask, cache=cache, past_len=mask.shape[1] - 1,
                       inputs_embeds=embeds, position_ids=next_position).logits[:, -1]
        if v2pe:
            next_position = next_position + 1
    if not out:
        return torch.empty(b, 0, dtype=torch.long, device=device)
    return torch.stack(out, dim=1)
