"""Stage 0: region-text alignment, a vision pre-training stage on grounding data (`internvl train --stage 0`).

InternViT is pre-trained before InternVL's stages 1 and 2 (InternVL 1.0 aligns it contrastively with text).
This stage does that at the level of regions, as GLIP does for detection: each image token (the projector's
output, what the LLM will read) is scored against the text of every phrase in the batch, and trained to pick
the phrase whose box center falls in that token's cell, or nothing. So after it, every object is marked by
one token per view (its tile and the thumbnail) that names it, which is what counting and attribute questions
need from the tower, before the LLM has learned anything.

Data: the official SFT format (meta JSON + JSONL) with grounding markup in the conversation, one image per
record, e.g. `{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nList the objects."},
{"from": "gpt", "value": "<ref>red circle</ref><box>[[120, 40, 250, 210]]</box>"}]}` (boxes in 0-1000,
`processing/grounding.py`). Every `<ref>phrase</ref><box>[[...]]</box>` of the record is a region; the rest of
the text is ignored. The text encoder is the LLM's own embedding table (a phrase is the mean of its token
embeddings, encoded with a leading space as mid-sentence words are), so the image tokens land next to the
words the LLM will later read and write. What trains: the ViT, the projector and the token embeddings.

The loss per token: cross-entropy over [nothing, phrase 1, ..., phrase P] with logits [0, s * cos(token,
phrase_p)]; tokens that hold a box center weigh POSITIVE_WEIGHT (they are a few in a tile of background),
cells where two centers fall are ignored. Normalised over the global batch like the SFT loss.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, ImageLoadError
from ..models.region_text import LOGIT_SCALE, phrase_embeddings, region_logits  # noqa: F401 (re-exported)
from ..processing.grounding import Region, parse_regions
from ..processing.image import open_image, to_pixel_values
from ..processing.tiling import dynamic_preprocess, target_grid
from .data import DataConfig, SFTDataset
from .objective import StatelessObjective

POSITIVE_WEIGHT = 4.0
NONE, IGNORED = -1, -2  # target values besides phrase indices


@dataclass
class RegionSample:
    pixel_values: torch.Tensor  # (tiles, 3, S, S)
    targets: torch.Tensor  # (tiles, tokens per tile) long: index into `phrases`, NONE or IGNORED
    phrases: list[str]
    source: str


@dataclass
class RegionBatch:
    pixel_values: torch.Tensor  # (tiles, 3, S, S)
    targets: torch.Tensor  # (tiles, tokens) long: row of `phrase_ids`, NONE or IGNORED
    token_weight: torch.Tensor  # (tiles, tokens) float32
    phrase_ids: torch.Tensor  # (P, L) long, padded
    phrase_mask: torch.Tensor  # (P, L) bool
    num_samples: int
    num_skipped: int = 0
    sources: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> RegionBatch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        moved["pixel_values"] = self.pixel_values.to(device, dtype)
        return replace(self, **moved)

    @property
    def num_tokens(self) -> int:
        """Image tokens in the batch (the throughput unit of this stage)."""
        return self.targets.numel()


def token_grid(num_image_token: int) -> int:
    side = math.isqrt(num_image_token)
    if side * side != num_image_token:
        raise ConfigError(f"{num_image_token} image tokens per tile do not form a square grid")
    return side


def region_targets(regions: list[Region], cols: int, rows: int, thumbnail: bool, side: int,
                   ps_version: str = "v2") -> torch.Tensor:
    """(tiles, side*side) targets: each region's index at the token cell holding its box center, in the tile
    that holds it and in the thumbnail; NONE elsewhere; IGNORED where two centers share a cell.

    Tiles are row by row, the thumbnail last (`dynamic_preprocess`); tokens of a tile are row by row for
    pixel shuffle v2 and column by column for v1 (its transposed grid).
    """
    views = cols * rows + (1 if thumbnail and cols * rows > 1 else 0)
    targets = torch.full((views, side * side), NONE, dtype=torch.long)

    def mark(view: int, u: float, v: float, index: int) -> None:
        col, row = min(int(u * side), side - 1), min(int(v * side), side - 1)
        cell = row * side + col if ps_version != "v1" else col * side + row
        targets[view, cell] = index if targets[view, cell] == NONE else IGNORED

    for index, region in enumerate(regions):
        cx, cy = region.center
        c, r = min(int(cx * cols), cols - 1), min(int(cy * rows), rows - 1)
        mark(r * cols + c, cx * cols - c, cy * rows - r, index)
        if views > cols * rows:
            mark(views - 1, cx, cy, index)
    return targets


class RegionDataset(SFTDataset):
    """Grounding records of an official meta file -> `RegionSample`s (None for skipped bad records); the
    meta file, line indexing, repeats and bad-record handling are `SFTDataset`'s."""

    def __init__(self, meta_path: str | os.PathLike, tokenizer: Any, cfg: DataConfig, seed: int = 0,
                 ps_version: str = "v2") -> None:
        super().__init__(meta_path, tokenizer, cfg, seed)
        self.ps_version, self.side = ps_version, token_grid(cfg.num_image_token)

    def build(self, record: Any, cfg: DataConfig, root: str, source: str, rng: random.Random | None,
              index: int) -> RegionSample:
        max_num = cfg.max_dynamic_patch
        image = record.get("image") if isinstance(record, dict) else None
        if not isinstance(image, str) or not image:
            raise DataError(f"{source}: a region-alignment record needs exactly one 'image' (a path)")
        turns = record.get("conversations")
        if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str)
                                                  for t in turns):
            raise DataError(f"{source}: 'conversations' must be a list of {{from, value}} turns")
        # a ref and its box may sit in different turns (a referring question, a box answer)
        regions = parse_regions("\n".join(t["value"] for t in turns), source)
        if not regions:
            raise DataError(f"{source}: no <ref>phrase</ref><box>[[x1, y1, x2, y2]]</box> region in the record")
        try:
            picture = open_image(os.path.join(root, image))
        except ImageLoadError as e:
            raise DataError(f"{source}: {e}") from None
        min_num = min(cfg.min_dynamic_patch, max_num)
        cols, rows = target_grid(picture.width, picture.height, min_num, max_num, cfg.image_size)
        tiles = dynamic_preprocess(picture, min_num, max_num, cfg.image_size, cfg.use_thumbnail)
        phrases = sorted({r.phrase for r in regions})
        index = {p: i for i, p in enumerate(phrases)}
        targets = region_targets(regions, cols, rows, cfg.use_thumbnail, self.side, self.ps_version)
        # the same phrase may have several boxes: map region order -> phrase index
        by_region = torch.tensor([index[r.phrase] for r in regions] + [IGNORED, NONE])
        targets = by_region[targets]  # NONE (-1) and IGNORED (-2) index the last two entries: themselves
        return RegionSample(to_pixel_values(tiles, cfg.image_size), targets, phrases, source)


@dataclass
class RegionCollator:
    """Concatenates tiles and gives the batch one phrase table (each distinct phrase once)."""

    tokenizer: Any

    def __call__(self, samples: list[RegionSample | None]) -> RegionBatch:
        kept = [s for s in samples if s is not None]
        if not kept:
            raise DataError("every sample of a micro-batch was skipped as bad; nothing to train on")
        table: dict[str, int] = {}
        targets = []
        for s in kept:
            local = torch.tensor([table.setdefault(p, len(table)) for p in s.phrases] + [IGNORED, NONE])
            targets.append(local[s.targets])
        encoded = [self.tokenizer.encode(" " + p) or [self.tokenizer.pad_token_id] for p in table]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(encoded), width, dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, :len(e)], mask[i, :len(e)] = torch.tensor(e), True
        targets = torch.cat(targets)
        weight = torch.where(targets >= 0, POSITIVE_WEIGHT, (targets == NONE).float())
        return RegionBatch(torch.cat([s.pixel_values for s in kept]), targets, weight, ids, mask, len(kept),
                           len(samples) - len(kept), [s.source for s in kept])


def region_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, weight_total: torch.Tensor
                ) -> torch.Tensor:
    """sum(weight * CE(logits, target + 1)) / weight_total; IGNORED tokens have weight 0."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), (targets + 1).clamp_min(0).reshape(-1),
                         reduction="none")
    return (ce * weight.reshape(-1)).sum() / weight_total


class RegionTextObjective(StatelessObjective):
    """The trainer's objective for stage 0 (see `objective.Objective`)."""

    def weight(self, batch: RegionBatch) -> torch.Tensor:
        return batch.token_weight.sum()

    def __call__(self, model: nn.Module, batch: RegionBatch, weight_total: torch.Tensor) -> torch.Tensor:
        b = batch.to(weight_total.device)
        image_tokens, phrases = model(None, None, None, b.pixel_values, phrases=(b.phrase_ids, b.phrase_mask))
        return region_loss(region_logits(image_tokens, phrases), b.targets, b.token_weight, weight_total)


def unfreeze_text_encoder(model: nn.Module) -> None:
    """Stage 0 trains the token embeddings (the phrase encoder) while the rest of the LLM stays frozen."""
    model.language_model.embed_tokens.weight.requires_grad_(True)


@torch.no_grad()
def region_accuracy(model: nn.Module, loader: Any, tokenizer: Any) -> dict[str, float]:
    """How well image tokens name their regions: accuracy over tokens holding a box center (the right phrase
    among the batch's) and over background tokens (nothing), and the phrase alone on positives."""
    model.eval()
    hits = {"positive": [0, 0], "background": [0, 0]}
    for batch in loader:
        tokens = model.extract_feature(batch.pixel_values)
        phrases = phrase_embeddings(model.language_model.embed_tokens, batch.phrase_ids, batch.phrase_mask)
        pred = region_logits(tokens, phrases).argmax(-1) - 1
        for name, where in (("positive", batch.targets >= 0), ("background", batch.targets == NONE)):
            hits[name][0] += int((pred[where] == batch.targets[where]).sum())
            hits[name][1] += int(where.sum())
    return {name: right / max(total, 1) for name, (right, total) in hits.items()}
