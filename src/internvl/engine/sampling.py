"""Per-request sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded generators.

Pure functions over one batch of last-position logits, where every row may carry its own parameters, so
requests with different settings decode together in one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """How one request is decoded. `temperature == 0` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in prompt or output
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings, cut from the output
    stop_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @classmethod
    def from_generation_config(cls, d: dict | None) -> SamplingParams:
        """The official `generation_config` dict (max_new_tokens, do_sample, temperature, top_p, ...)."""
        d = dict(d or {})
        if d.get("num_beams", 1) != 1:
            raise ValueError("beam search is not supported; use num_beams=1")
        do_sample = d.get("do_sample", False)
        return cls(max_new_tokens=d.get("max_new_tokens", 256),
                   temperature=float(d.get("temperature", 1.0)) if do_sample else 0.0,
                   top_k=int(d.get("top_k") or 0) if do_sample else 0,
                   top_p=float(d.get("top_p", 1.0)) if do_sample else 1.0,
                   repetition_penalty=float(d.get("repetition_penalty", 1.0)), seed=d.get("seed"))


def apply_repetition_penalty(logits: torch.Tensor, seen: list[torch.Tensor], penalties: list[float]) -> torch.Tensor:
    """CTRL-style: divide positive, multiply negative logits of already-seen tokens (per row)."""
    for row, (ids, p) in enumerate(zip(seen, penalties)):
        if p == 1.0 or ids.numel() == 0:
            continue
        vals = logits[row, ids]
        logits[row, ids] = torch.where(vals > 0, vals / p, vals * p)
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) everything outside the top-k and outside the smallest prefix holding top_p mass; (V,)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # a token is kept if the mass before it is below top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           seen: list[torch.Tensor]) -> torch.Tensor:
    """Last-position logits (B, V) -> next token ids (B,), one row per request."""
    logits = logits.float()
    logits = apply_repetition_penalty(logits, seen, [p.repetition_penalty for p in params])
    out = logits.argmax(-1)
    for row, (p, g) in enumerate(zip(params, generators)):
        if p.temperature == 0:
            continue
        row_logits = filter_top_k_top_p(logits[row] / p.temperature, p.top_k, p.top_p)
        out[row] = torch.multinomial(row_logits.softmax(-1), 1, generator=g)[0]
    return out
