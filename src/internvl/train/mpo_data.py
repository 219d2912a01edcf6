"""Preference data for MPO: the official MMPR meta JSON + JSONL -> (chosen, rejected) pairs -> one batch of both.

Facts from `internvl_chat/internvl/train/internvl_chat_mpo.py` (`LazySupervisedDataset`, docs section 1.3-1.4):
- The meta file is the SFT one (`root`, `annotation`, `repeat_time`, per-dataset `max_dynamic_patch`,
  `data_augment`); `data.read_meta` reads it and `data.SFTDataset` indexes its lines, so `repeat_time`,
  bad-line errors (`file:line: ...`) and `--skip-bad-samples` behave as for SFT.
- A line is `{"image": "a.png" | ["a.png", "b.png"] | absent, "question": str, "chosen": str, "rejected": str}`
  (`video` too). A single image whose question has no `<image>` gets `'<image>\\n'` prepended; a list needs one
  placeholder per image, as for SFT.
- The prompt and each response are two separate single-turn conversations, human = question, gpt = response,
  each rendered by the model's template with its default system message and label-masked exactly as SFT
  (`records.encode_turns`): the response and its end token (`<|im_end|>`) are scored, nothing else.
- The images are loaded and tiled once per pair; chosen and rejected use the same tiles.

A batch holds the micro-batch's chosen sequences followed by its rejected ones, collated one per row
(padded) or packed (`packing.pack`), so the policy runs one forward over both, like the official
`concatenated_forward`. The official code also repeats the pixel values for the rejected half, so the ViT
encodes every tile twice; here the batch keeps each pair's tiles once with `tile_index`, the order their
features take in the token stream, and the objective encodes them once whenever the ViT is deterministic
(eval mode, or no drop path and no dropout), which gives the same features at half the ViT cost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import DataError, ImageLoadError
from ..processing.prompt import IMAGE_PLACEHOLDER
from .data import DataConfig, SFTDataset
from .packing import Batch, collate, pack
from .records import Sample, _media, _pixels, _place_media, encode_turns

KEYS = ("question", "chosen", "rejected")


@dataclass
class PreferencePair:
    """One tokenized MMPR line: two samples sharing one set of tiles."""
    chosen: Sample
    rejected: Sample
    index: int  # position in the dataset (the key of precomputed reference log-probs)


def build_pair(record: Any, tokenizer: Any, cfg: DataConfig, root: str, source: str,
               rng: random.Random | None = None) -> tuple[Sample, Sample]:
    """One MMPR record -> (chosen, rejected) samples whose pixel values are the same tensor.

    Raises:
        DataError: A key is missing or not a non-empty string, the media are malformed or unreadable, the
            placeholders do not match the images, or a sequence cannot fit `max_seq_length`; the message starts
            with `source`.
    """
    try:
        if not isinstance(record, dict):
            raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
        texts = []
        for key in KEYS:
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{key!r} is missing or not a non-empty string (an MMPR line has 'question', "
                                "'chosen', 'rejected' and optionally 'image')")
            texts.append(value.strip() if cfg.template == "internlm2-chat" else value)
        question, chosen, rejected = texts
        images, video = _media(record)
        frames = cfg.num_video_frames if video else 0
        turns = [[0, question], [1, chosen]]
        _place_media(turns, images, isinstance(record.get("image"), str), frames)
        if IMAGE_PLACEHOLDER in rejected:
            raise DataError(f"'rejected' contains {IMAGE_PLACEHOLDER}; placeholders belong in the question")
        pixel_values, num_tiles = _pixels(images, video, root, cfg, rng)
        pair = []
        for response in (chosen, rejected):
            ids, labels = encode_turns([turns[0], [1, response]], None, num_tiles, tokenizer, cfg)
            pair.append(Sample(ids, labels, pixel_values, num_tiles, source))
    except (DataError, ImageLoadError) as e:
        raise DataError(f"{source}: {e}") from None
    return pair[0], pair[1]


class PreferenceDataset(SFTDataset):
    """All datasets of an MMPR meta file as one indexable dataset of `PreferencePair`s (None for skipped bad
    lines); line indexing, repeats and skipping are `SFTDataset`'s."""

    def build(self, record: Any, cfg: DataConfig, root: str, source: str, rng: random.Random | None,
              index: int) -> PreferencePair:
        chosen, rejected = build_pair(record, self.tokenizer, cfg, root, source, rng)
        return PreferencePair(chosen, rejected, index)


@dataclass
class PreferenceBatch:
    """A micro-batch of pairs: `batch` holds the chosen sequences (input order) then the rejected ones.

    Sequence s of the input order sits at `batch.slots[s]`; pair p's chosen is sequence p, its rejected
    sequence p + num_pairs.
    """
    batch: Batch  # its pixel_values: each pair's tiles once, pair by pair
    num_pairs: int
    indices: torch.Tensor  # (num_pairs,) long: dataset index of each pair
    tile_index: torch.Tensor | None = None  # (tiles in token order,) long: row of batch.pixel_values for each
    num_skipped: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Real tokens of both halves (what the forward computes)."""
        return self.batch.num_tokens

    @property
    def num_samples(self) -> int:
        return self.num_pairs

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PreferenceBatch:
        tile_index = None if self.tile_index is None else self.tile_index.to(device)
        return PreferenceBatch(self.batch.to(device, dtype), self.num_pairs, self.indices, tile_index,
                               self.num_skipped, self.sources)


@dataclass
class PreferenceCollator:
    """`DataLoader(collate_fn=...)` for pairs: drops skipped (None) pairs, then collates the 2P sequences one
    per row, or packs them into rows of `max_tokens` when given."""
    pad_id: int
    max_tokens: int | None = None

    def __call__(self, pairs: list[PreferencePair | None]) -> PreferenceBatch:
        kept = [p for p in pairs if p is not None]
        sequences = [p.chosen for p in kept] + [p.rejected for p in kept]
        # the loss weights of a Batch are not used by MPO; "token" is the cheapest to compute
        # assemble without pixels (they would be copied twice), then give every pair's tiles once
        bare = [replace(s, pixel_values=None) for s in sequences]
        batch = collate(bare, self.pad_id, "token") if self.max_tokens is None else \
            pack(bare, self.max_tokens, self.pad_id, "token")
        tile_index = None
        if any(p.chosen.pixel_values is not None for p in kept):
            first, start = [], 0
            for p in kept:
                first.append(start)
                start += 0 if p.chosen.pixel_values is None else p.chosen.pixel_values.shape[0]
            batch.pixel_values = torch.cat([p.chosen.pixel_values for p in kept if p.chosen.pixel_values is not None])
            batch.num_tiles = []
            order = []  # the order packing wrote the sequences: row by row, then within the row
            for i in sorted(range(len(sequences)), key=lambda i: batch.slots[i]):
                pair = kept[i % len(kept)]
                if pair.chosen.pixel_values is not None:
                    order.append(torch.arange(first[i % len(kept)], first[i % len(kept)] + pair.chosen.pixel_values.shape[0]))
                    batch.num_tiles += pair.chosen.num_tiles
            tile_index = torch.cat(order)
        return PreferenceBatch(batch, len(kept), torch.tensor([p.index for p in kept], dtype=torch.long), tile_index,
                               len(pairs) - len(kept), [p.chosen.source for p in kept])
