"""What a training step minimises: the `Objective` protocol the trainer drives (SFT, MPO, stage 0, ...)."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

Batch = Any  # whatever the objective's collator makes


class Objective(Protocol):
    """What a step minimises. The step's loss is the sum of `__call__` over its micro-batches (and ranks),
    where `weight_total` (on the training device) is the sum of `weight` over the same micro-batches (and ranks).
    Both receive the batch as the DataLoader made it, on the CPU.

    Besides the loss, an objective may log more: `step_statistics` hands over sums it gathered during the step
    (the trainer adds them up over ranks, in the same reduction as its own counts), `metrics` turns the global
    sums into the step's metric values. `state_dict` is saved in every checkpoint and given back on resume."""

    def weight(self, batch: Batch) -> torch.Tensor: ...

    def __call__(self, model: nn.Module, batch: Batch, weight_total: torch.Tensor) -> torch.Tensor: ...

    def step_statistics(self) -> dict[str, torch.Tensor]: ...

    def metrics(self, sums: dict[str, float]) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class StatelessObjective:
    """The protocol's defaults: no extra statistics and nothing to save (SFT, stage 0); an objective that logs
    statistics but saves nothing (ViCO consistency) overrides the first two only."""

    def step_statistics(self) -> dict[str, torch.Tensor]:
        return {}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
