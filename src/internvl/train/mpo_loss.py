"""The MPO loss: sequence log-probs, the preference losses, the running reward shift, the SFT term.

Facts from `internvl_chat/internvl/train/trainer_dpo.py` (`MultimodalDPOTrainer`) and TRL 0.10.1's
`DPOTrainer.dpo_loss` / `get_batch_logps` / `RunningMoments` (docs section 1.6), with beta = 0.1:
- log pi(y|x) is the SUM of the log-probs of the response's scored tokens (labels != -100, shifted by one);
  rho = log pi_theta(y|x) - log pi_ref(y|x) for the chosen (c) and the rejected (r) response.
- sigmoid:  -log sigma(beta * (rho_c - rho_r))
- bco_pair: -log sigma(beta * rho_c - delta) - log sigma(-(beta * rho_r - delta)), where delta is the running
  mean of the per-micro-batch mean reward (mean of the 2P values beta * rho), updated before use, every
  micro-batch (`RunningMean`; under several processes each step adds the mean over ranks of the rank means).
- ipo:      (rho_c - rho_r - 1 / (2 beta))^2 on length-normalised log-probs when ipo is the only loss type
  (the official code normalises only then); hinge: relu(1 - beta * (rho_c - rho_r)).
- sft:      the SFT term below, as a loss type of its own (TRL >= 0.20's name for it).
- The per-pair losses are summed with their weights, the SFT term (times `rpo_alpha`) is added to every pair,
  and the micro-batch loss is the mean over its pairs. The SFT term is the official `nn.CrossEntropyLoss()`
  over the micro-batch's chosen sequences: ONE mean over all their scored tokens (not a mean of per-pair means).
- Rewards (metrics only) are beta * rho, detached; accuracy = reward_c > reward_r.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .data import IGNORE_INDEX
from .loss import _sample_key, _token_ce

LOSS_TYPES = ("sigmoid", "bco_pair", "ipo", "hinge", "sft")
DEFAULT_TYPES, DEFAULT_WEIGHTS = ("sigmoid", "bco_pair"), (0.8, 0.2)  # every official MPO script


@dataclass(frozen=True)
class MPOLossConfig:
    loss_types: tuple[str, ...] = DEFAULT_TYPES
    loss_weights: tuple[float, ...] = DEFAULT_WEIGHTS
    beta: float = 0.1
    rpo_alpha: float | None = 1.0  # weight of the SFT term added to every pair (None or 0: no SFT term)

    def __post_init__(self) -> None:
        if not self.loss_types:
            raise ConfigError("--loss-type needs at least one loss type")
        unknown = [t for t in self.loss_types if t not in LOSS_TYPES]
        if unknown:
            raise ConfigError(f"unknown loss type(s) {unknown}; known: {', '.join(LOSS_TYPES)}")
        if len(set(self.loss_types)) != len(self.loss_types):
            raise ConfigError(f"--loss-type names a loss type twice: {','.join(self.loss_types)}")
        if len(self.loss_weights) != len(self.loss_types):
            raise ConfigError(f"--loss-weights has {len(self.loss_weights)} value(s) for {len(self.loss_types)} "
                              f"loss type(s) ({','.join(self.loss_types)})")
        if not all(math.isfinite(w) for w in self.loss_weights):
            raise ConfigError(f"--loss-weights must be finite numbers, got {self.loss_weights}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"--beta must be a positive number, got {self.beta}")
        if self.rpo_alpha is not None and not math.isfinite(self.rpo_alpha):
            raise ConfigError(f"--rpo-alpha must be a finite number, got {self.rpo_alpha}")

    @classmethod
    def parse(cls, loss_type: str, loss_weights: str | None, beta: float, rpo_alpha: float | None) -> MPOLossConfig:
        """From the CLI's comma-separated strings. Without weights: 0.8,0.2 for the official sigmoid,bco_pair
        pair, else 1 for each type (TRL's default)."""
        types = tuple(t.strip() for t in loss_type.split(",") if t.strip())
        if loss_weights is None:
            weights = DEFAULT_WEIGHTS if types == DEFAULT_TYPES else (1.0,) * len(types)
        else:
            try:
                weights = tuple(float(w) for w in loss_weights.split(","))
            except ValueError:
                raise ConfigError(f"--loss-weights must be comma-separated numbers, got {loss_weights!r}") from None
        return cls(types, weights, beta, rpo_alpha)

    @property
    def uses_sft_term(self) -> bool:
        return bool(self.rpo_alpha) or "sft" in self.loss_types

    @property
    def length_normalised(self) -> bool:
        return self.loss_types == ("ipo",)


@dataclass
class RunningMean:
    """bco_pair's reward shift delta: TRL's `RunningMoments` mean (starts at 0 with count 1e-24, so the first
    update makes delta the first value). `update(total, n)` adds n values summing to `total`."""
    mean: float = 0.0
    count: float = 1e-24

    def update(self, total: float, n: float) -> float:
        if n > 0:
            new_count = self.count + n
            self.mean += (total / n - self.mean) * n / new_count
            self.count = new_count
        return self.mean

    def state_dict(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.count = float(state["mean"]), float(state["count"])


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, seq_ids: torch.Tensor,
                   slots: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label) over each sequence's scored tokens, and their number, in `slots` order.

    Args:
        logits: (B, T, V), position t predicting labels[:, t + 1].
        labels: (B, T) long, IGNORE_INDEX where not scored.
        seq_ids: (B, T) index of the sequence within its row (-1 on padding), as `packing` makes them.
        slots: (row, seq id) of each sequence, in the order wanted.

    Returns:
        (N,) float32 log-prob sums (with a graph) and (N,) float32 token counts.
    """
    ce = _token_ce(logits, labels)  # (B, T-1), 0 where ignored
    b, slots_per_row = labels.shape[0], int(seq_ids.max()) + 1 if seq_ids.numel() else 1
    target_seq = seq_ids[:, 1:]
    scored = (labels[:, 1:] != IGNORE_INDEX) & (target_seq >= 0)
    key = _sample_key(target_seq, slots_per_row)
    size = b * (slots_per_row + 1)
    sums = torch.zeros(size, dtype=ce.dtype, device=ce.device).index_add(0, key[scored], ce[scored])
    counts = torch.bincount(key[scored], minlength=size).to(ce.dtype)
    where = torch.tensor([r * (slots_per_row + 1) + s + 1 for r, s in slots], dtype=torch.long, device=ce.device)
    return -sums[where], counts[where]


@dataclass
class MPOLossOutput:
    loss: torch.Tensor  # scalar: mean over pairs of the weighted per-pair losses (+ rpo_alpha * SFT term)
    per_type: dict[str, torch.Tensor]  # loss type -> (P,) unweighted per-pair losses (detached)
    sft: torch.Tensor | None  # the SFT term (token mean over the chosen responses), detached
    chosen_rewards: torch.Tensor  # (P,) beta * rho_c, detached
    rejected_rewards: torch.Tensor  # (P,)
    delta: float | None  # bco_pair's shift used this micro-batch


def mpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, cfg: MPOLossConfig, sft_term: torch.Tensor | None = None,
             update_delta: Callable[[torch.Tensor], float] | None = None) -> MPOLossOutput:
    """The micro-batch's MPO loss from sequence log-probs (P,) each (length-normalised already for ipo).

    Args:
        sft_term: The SFT term (a scalar with a graph); required when `cfg.uses_sft_term`.
        update_delta: Takes this micro-batch's mean reward (a detached scalar), updates the running mean and
            returns delta; required with bco_pair (the objective owns the state and the cross-rank average).
    """
    beta = cfg.beta
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    total = policy_chosen.new_zeros(policy_chosen.shape)
    per_type, delta = {}, None
    for loss_type, weight in zip(cfg.loss_types, cfg.loss_weights):
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(beta * logits)
        elif loss_type == "hinge":
            losses = torch.relu(1 - beta * logits)
        elif loss_type == "ipo":
            losses = (logits - 1 / (2 * beta)) ** 2
        elif loss_type == "bco_pair":
            if update_delta is None:
                raise ValueError("bco_pair needs update_delta")
            delta = update_delta(torch.cat((beta * chosen_ratio, beta * rejected_ratio)).mean().detach())
            losses = -F.logsigmoid(beta * chosen_ratio - delta) - F.logsigmoid(-(beta * rejected_ratio - delta))
        else:  # sft
            losses = sft_term.expand(policy_chosen.shape)
        per_type[loss_type] = losses.detach()
        total = total + weight * losses
    if cfg.rpo_alpha:
        total = total + cfg.rpo_alpha * sft_term
    return MPOLossOutput(total.mean(), per_type, None if sft_term is None else sft_term.detach(),
                         beta * chosen_ratio.detach(), beta * rejected_ratio.detach(), delta)
