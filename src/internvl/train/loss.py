"""SFT loss: per-token weights for the `token` / `sample` / `square` reductions and the weighted cross-entropy.

Spec section 5; facts from `internvl_chat_finetune.py` (`len2weight`), `dataset_packed.py`
(`get_cu_seqlens_and_indexes`, `packed_collate_fn`) and `modeling_internvl_chat.py` (`forward`).

How the official code reduces (our reading): each sample's x = its number of supervised labels
(labels != -100, counted before the shift); every token of the sample gets weight len2weight(x) = 1
(`token`), 1/x (`sample`) or 1/sqrt(x) (`square`), then weight 0 wherever the label is -100. The model shifts
(logits[:, :-1] predict labels[:, 1:], weights[:, 1:] go with the target token) and returns

    loss = sum_t w_t * CE_t / sum_t w_t

over the whole micro-batch (all rows, all packed samples); with `loss_reduction_all_gather` the denominator
is first averaged over ranks. So `token` is the mean over supervised tokens, `sample` the mean over samples of
each sample's mean CE, and `square` the sqrt(x)-weighted mean of per-sample means: sum_s sqrt(x_s) mean_s /
sum_s sqrt(x_s). Upstream applies these weights only with `use_packed_ds` (plain batches use the token mean);
here they apply to packed and unpacked batches alike, so both give the same loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .data import IGNORE_INDEX

REDUCTIONS = ("token", "sample", "square")


def len2weight(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """The official per-token weight of a sample with x supervised tokens (0 where x == 0)."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown loss reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
    x = x.float()
    w = {"token": torch.ones_like(x), "sample": 1 / x, "square": x.rsqrt()}[reduction]
    return torch.where(x > 0, w, torch.zeros_like(x))


def token_weights(labels: torch.Tensor, seq_ids: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-token loss weights (B, T) float32, aligned with `labels` (0 where the label is ignored).

    Args:
        labels: (B, T) long, IGNORE_INDEX where not supervised.
        seq_ids: (B, T) long, index of the sample within its row, -1 on padding.
        reduction: "token", "sample" or "square".
    """
    supervised = (labels != IGNORE_INDEX) & (seq_ids >= 0)
    slots = int(seq_ids.max()) + 1 if seq_ids.numel() else 1
    key = _sample_key(seq_ids, slots)
    counts = torch.bincount(key[supervised], minlength=labels.shape[0] * (slots + 1))
    return torch.where(supervised, len2weight(counts[key], reduction), 0.0)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, loss_weight: torch.Tensor,
             weight_total: torch.Tensor | float | None = None) -> torch.Tensor:
    """The official weighted next-token loss: sum(w * CE) / sum(w) over the shifted targets.

    Args:
        logits: (B, T, V).
        labels: (B, T) long, IGNORE_INDEX where not supervised.
        loss_weight: (B, T) from `token_weights`, weight of the label at the same position.
        weight_total: The denominator; default the batch's own sum(loss_weight[:, 1:]). Pass the sum over all
            micro-batches of a step (and ranks) to make gradient accumulation equal one big batch.

    Returns:
        Scalar float32 loss; 0 (with a graph) when nothing is supervised.
    """
    ce = _token_ce(logits, labels)
    w = loss_weight[:, 1:].to(ce.dtype)
    total = w.sum() if weight_total is None else torch.as_tensor(weight_total, dtype=ce.dtype, device=ce.device)
    return (ce * w).sum() / (total + (total == 0).to(ce.dtype))  # 0 / 1 rather than 0 / 0


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
    """Mean CE of each sample's supervised targets: (B, S) indexed by (row, seq id); NaN where none."""
    ce = _token_ce(logits, labels)
    b, slots = labels.shape[0], int(seq_ids.max()) + 1
    target_seq = seq_ids[:, 1:]
    supervised = (labels[:, 1:] != IGNORE_INDEX) & (target_seq >= 0)
    key = _sample_key(target_seq, slots)[supervised]
    sums = torch.zeros(b * (slots + 1), dtype=ce.dtype, device=ce.device).index_add_(0, key, ce[supervised])
    counts = torch.bincount(key, minlength=b * (slots + 1)).to(ce.dtype)
    return (sums / counts).view(b, slots + 1)[:, 1:]


def _token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) float32 CE of logits[:, t] against labels[:, t+1]; 0 at ignored targets."""
    b, t, v = logits.shape
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), labels[:, 1:].reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none")
    return ce.view(b, t - 1)


def _sample_key(seq_ids: torch.Tensor, slots: int) -> torch.Tensor:
    """A flat id per (row, sample): row * (slots + 1) + seq_id + 1 (padding maps to its row's slot 0)."""
    rows = torch.arange(seq_ids.shape[0], device=seq_ids.device)[:, None]
    return rows * (slots + 1) + seq_ids + 1
