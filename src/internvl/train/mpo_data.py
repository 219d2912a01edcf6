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
`concatenated_forward` (which also repeats the pixel values for the rejected half).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
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
    batch: Batch
    num_pairs: int
    indices: torch.Tensor  # (num_pairs,) long: dataset index of each pair
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
        return PreferenceBatch(self.batch.to(device, dtype), self.num_pairs, self.indices, self.num_skipped,
                               self.sources)


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
        batch = collate(sequences, self.pad_id, "token") if self.max_tokens is None else \
            pack(sequences, self.max_tokens, self.pad_id, "token")
        return PreferenceBatch(batch, len(kept), torch.tensor([p.index for p in kept], dtype=torch.long),
                               len(pairs) - len(kept), [p.chosen.source for p in kept])
