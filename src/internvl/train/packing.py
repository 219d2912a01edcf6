"""Batches of samples: one per row (`collate`) or packed into token budgets (`pack`, the official
`use_packed_ds` / `max_packed_tokens` idea). Spec section 5.

A packed row holds several samples back to back. Each keeps its own world: positions restart at 0,
`attention_mask_from_seq_ids` lets a token see only earlier tokens of its own sample, the first label of every
sample is ignored (in a row of its own nothing predicts it either, so packed and unpacked losses agree), and
the loss weights are computed per sample (`loss.token_weights`). Image tiles are concatenated in the order
their `<IMG_CONTEXT>` runs appear in the flattened (B, T) batch, the order `InternVL.embed` fills them.

Upstream packs from a streaming buffer to exactly `max_packed_tokens` per row; here the DataLoader hands
a list of samples to the collator, which packs them greedily (first fit, in order) into as many rows as it
needs, each at most `max_tokens` long unless one sample alone is longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from ..errors import ConfigError
from .data import IGNORE_INDEX, Sample
from .loss import REDUCTIONS, token_weights


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long, pad = pad id
    labels: torch.Tensor  # (B, T) long, IGNORE_INDEX on padding and on each sample's first token
    position_ids: torch.Tensor  # (B, T) long, restarting at 0 per sample, 0 on padding (float32 with V2PE)
    seq_ids: torch.Tensor  # (B, T) long, index of the sample within its row, -1 on padding
    loss_weight: torch.Tensor  # (B, T) float32, per-token weight of the reduction (0 where label is ignored)
    pixel_values: torch.Tensor | None  # (sum tiles, 3, S, S), in order of appearance, or None
    num_samples: int
    num_tiles: list[int] = field(default_factory=list)  # tiles per image, same order as pixel_values
    slots: list[tuple[int, int]] = field(default_factory=list)  # (row, seq id) of each input sample, input order
    num_skipped: int = 0  # bad samples (None) the collator dropped
    sources: list[str] = field(default_factory=list)  # "file:line" of each sample, input order

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """The batch on `device`; `dtype` applies to pixel_values only."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        if self.pixel_values is not None:
            moved["pixel_values"] = self.pixel_values.to(device, dtype)
        return replace(self, **moved)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int((self.seq_ids >= 0).sum())


def collate(samples: list[Sample], pad_id: int, reduction: str = "square") -> Batch:
    """One sample per row, right-padded to the longest."""
    return _assemble(samples, [[i] for i in range(len(samples))], pad_id, reduction)


def pack(samples: list[Sample], max_tokens: int, pad_id: int, reduction: str = "square") -> Batch:
    """Greedy first fit, in order, into rows of at most `max_tokens`; a longer sample gets a row of its own.

    The batch is as wide as its longest row.
    """
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i, sample in enumerate(samples):
        n = len(sample.input_ids)
        r = next((r for r in range(len(rows)) if room[r] >= n), None)
        if r is None:
            rows.append([])
            room.append(max_tokens)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= n
    return _assemble(samples, rows, pad_id, reduction)


def attention_mask_from_seq_ids(seq_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True = may attend: same sample and not in the future.

    Padding (seq id -1) attends to itself only, so no softmax row is empty (no NaN) and nothing real sees it.
    """
    t = seq_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq_ids.device).tril()
    same = (seq_ids[:, :, None] == seq_ids[:, None, :]) & (seq_ids >= 0)[:, :, None]
    return ((same & causal) | torch.eye(t, dtype=torch.bool, device=seq_ids.device))[:, None]


@dataclass
class PackedCollator:
    """`DataLoader(collate_fn=...)`: drops None (skipped) samples, then packs or collates.

    Attributes:
        pad_id: Token id written on padding (the tokenizer's `pad_token_id`).
        reduction: Loss reduction for `Batch.loss_weight` ("token", "sample" or "square").
        max_tokens: Token budget per packed row; None puts one sample per row.
    """

    pad_id: int
    reduction: str = "square"
    max_tokens: int | None = None

    def __call__(self, samples: list[Sample | None]) -> Batch:
        kept = [s for s in samples if s is not None]
        if self.max_tokens is None:
            batch = collate(kept, self.pad_id, self.reduction)
        else:
            batch = pack(kept, self.max_tokens, self.pad_id, self.reduction)
        batch.num_skipped = len(samples) - len(kept)
        return batch


def _assemble(samples: list[Sample], rows: list[list[int]], pad_id: int, reduction: str) -> Batch:
    """Write the samples into (len(rows), width) tensors; with no samples, one padding token and zero weights."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown loss reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
    rows = rows or [[]]
    width = max(1, max(sum(len(samples[i].input_ids) for i in row) for row in rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    v2pe = any(samples[i].position_ids is not None for row in rows for i in row)
    position_ids = torch.zeros(input_ids.shape, dtype=torch.float32 if v2pe else torch.long)
    seq_ids = torch.full_like(input_ids, -1)
    pixels, num_tiles, slots = [], [], [(0, 0)] * len(samples)
    for r, row in enumerate(rows):
        pos = 0
        for s, i in enumerate(row):
            sample = samples[i]
            n = len(sample.input_ids)
            input_ids[r, pos:pos + n] = sample.input_ids
            labels[r, pos + 1:pos + n] = sample.labels[1:]
            position_ids[r, pos:pos + n] = torch.arange(n) if sample.position_ids is None else sample.position_ids
            seq_ids[r, pos:pos + n] = s
            if sample.pixel_values is not None:
                pixels.append(sample.pixel_values)
                num_tiles += sample.num_tiles
            slots[i] = (r, s)
            pos += n
    return Batch(input_ids, labels, position_ids, seq_ids, token_weights(labels, seq_ids, reduction),
                 torch.cat(pixels) if pixels else None, len(samples), num_tiles, slots,
                 sources=[s.source for s in samples])
