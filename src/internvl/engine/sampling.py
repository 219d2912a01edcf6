"""Per-request sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded generators.

Pure functions over one batch of last-position logits, where every row may carry its own parameters, so
requests with different settings decode together in one step. The parameters are checked where they enter
(`SamplingParams`), and a row that still cannot be sampled (non-finite logits) is reported, not raised, so
only its own request fails, never the requests batched beside it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

# Dividing float32 logits by a smaller temperature can overflow to inf (1e-300 is 0 in float32); such
# temperatures are greedy in all but name, so they decode greedily.
GREEDY_BELOW = 1e-5
# Beyond these, penalized logits leave the range where float32 keeps their order meaningful.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes


def _integer(value, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name} must be {'>= ' + str(low) if high is None else f'in [{low}, {high}]'}, got {value}")


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


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
        """Every value is checked here, where it enters the engine: a bad one is a ConfigError (a ValueError)
        naming it, never a NaN in the middle of a batched step."""
        _integer(self.max_new_tokens, "max_new_tokens", 0)
        _integer(self.top_k, "top_k", 0)
        if self.seed is not None:
            _integer(self.seed, "seed", MIN_SEED, MAX_SEED)
        if _real(self.temperature, "temperature") < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < _real(self.top_p, "top_p") <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        penalty = _real(self.repetition_penalty, "repetition_penalty")
        if not MIN_REPETITION_PENALTY <= penalty <= MAX_REPETITION_PENALTY:
            raise ConfigError(f"repetition_penalty must be in [{MIN_REPETITION_PENALTY:g}, "
                              f"{MAX_REPETITION_PENALTY:g}], got {self.repetition_penalty}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        for t in self.stop_token_ids:
            _integer(t, "stop_token_ids[]", 0)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @classmethod
    def from_generation_config(cls, d: dict | None) -> SamplingParams:
        """The official `generation_config` dict (max_new_tokens, do_sample, temperature, top_p, ...)."""
        d = dict(d or {})
        if d.get("num_beams", 1) != 1:
            raise ConfigError("beam search is not supported; use num_beams=1")
        do_sample = d.get("do_sample", False)
        # values pass through unconverted, so a wrong type is named by __post_init__ rather than coerced
        return cls(max_new_tokens=d.get("max_new_tokens", 256),
                   temperature=d.get("temperature", 1.0) if do_sample else 0.0,
                   top_k=(d.get("top_k") or 0) if do_sample else 0,
                   top_p=d.get("top_p", 1.0) if do_sample else 1.0,
                   repetition_penalty=d.get("repetition_penalty", 1.0), seed=d.get("seed"))


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


def nonfinite_rows(logits: torch.Tensor) -> list[int]:
    """Rows of (B, V) logits holding a NaN or an infinity. One sum per row first: NaN and inf carry into it,
    so only a non-finite sum (or one that overflowed) needs the elementwise test, which costs ~1 ms per step
    over a 150k vocabulary."""
    if bool(torch.isfinite(logits.sum(-1)).all()):
        return []
    return (~torch.isfinite(logits).all(-1)).nonzero().flatten().tolist()


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           seen: list[torch.Tensor]) -> tuple[list[int], dict[int, str]]:
    """Last-position logits (B, V) -> (next token id per row, {row: why} for rows that cannot be sampled).

    A failed row's token is meaningless; the caller ends that request and keeps the others. Rows are checked
    before any random number is drawn, so a seeded request samples the same tokens whatever its neighbours.
    """
    logits = logits.float()
    errors = {row: "the model produced non-finite logits (NaN or inf)" for row in nonfinite_rows(logits)}
    logits = apply_repetition_penalty(logits, seen, [p.repetition_penalty for p in params])
    out = logits.argmax(-1)
    probs: dict[int, torch.Tensor] = {}
    for row, p in enumerate(params):
        if row in errors or p.greedy:
            continue
        row_probs = filter_top_k_top_p(logits[row] / p.temperature, p.top_k, p.top_p).softmax(-1)
        if not (torch.isfinite(row_probs).all() and row_probs.sum() > 0):
            errors[row] = f"no token can be sampled at temperature {p.temperature:g} (the probabilities are not finite)"
        else:
            probs[row] = row_probs
    for row, row_probs in probs.items():
        out[row] = torch.multinomial(row_probs, 1, generator=generators[row])[0]
    return out.tolist(), errors
