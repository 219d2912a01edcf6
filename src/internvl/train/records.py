"""One official JSONL record -> token ids, label mask and pixel values (`build_sample`). Spec section 5.

Facts from `internvl_chat/internvl/train/internvl_chat_finetune.py` and `dataset.py`, with the official
silent failures turned into `DataError`s:
- A record has `conversations` (human/gpt turns, optionally a leading `system` turn that replaces the system
  message) and `image` (a path, or a list of paths), `video`, or neither (pure text).
- A single `image` string whose first human turn has no `<image>` gets `'<image>\\n'` prepended. A list of
  images gets no placeholders: the official code asserts one `<image>` per image, so a mismatch is an error
  here too (write `Image-1: <image>\\nImage-2: <image>\\n...`). Each of n images is tiled with at most
  `max(1, max_dynamic_patch // n)` tiles. A video becomes `Frame-1: <image>\\n...` at its `<video>` (prepended
  to the first human turn when absent), one tile per frame.
- Labels are -100 everywhere but the assistant replies and their closing separator (`render_spans`). The
  whole prompt is tokenized once (the ids inference would see) and a token is supervised when any of its
  characters is; InternLM2 tokenizers add BOS through their own post-processor.
- `internlm2-chat` strips each turn's text, as `preprocess_internlm` does.
- A sample longer than `max_seq_length` is truncated (ids and labels together) unless that would cut image
  tokens or leave nothing supervised; then it is a `DataError`.
- `data_augment` re-encodes every tile as JPEG with a random quality in [75, 100], as the official
  `build_transform(is_train=True)` does.
- Replies take the template's training form (GPT-OSS: `<|channel|>final<|message|>...<|return|>`).
- With `v2pe_stride` the sample carries V2PE positions (`models/v2pe.py`), as the official `v2pe_fix` training.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError, ImageLoadError
from ..models.v2pe import v2pe_positions
from ..processing.image import open_image, to_pixel_values
from ..processing.prompt import IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, expand_images
from ..processing.templates import get_template, render_spans
from ..processing.tiling import dynamic_preprocess, per_image_tile_budget
from ..processing.video import read_frames, video_prompt

IGNORE_INDEX = -100
VIDEO_PLACEHOLDER = "<video>"
_ROLES = {"human": 0, "gpt": 1}


@dataclass
class Sample:
    """One tokenized training conversation with its images."""
    input_ids: torch.Tensor  # (T,) long
    labels: torch.Tensor  # (T,) long, IGNORE_INDEX where not supervised
    pixel_values: torch.Tensor | None  # (N_tiles, 3, S, S) float32, or None for text-only
    num_tiles: list[int]  # tiles per image (frames of a video count as images)
    source: str  # "file.jsonl:LINE"
    position_ids: torch.Tensor | None = None  # (T,) float32 V2PE positions; None = 0, 1, 2, ...


@dataclass
class DataConfig:
    """How records become samples; the image settings come from the model config (`from_model`).

    `max_seq_length`: longer samples are truncated, or rejected when that would cut an image or leave
    nothing supervised. `max_dynamic_patch` is replaced per dataset by the meta file's value, if any.
    """
    template: str
    image_size: int
    num_image_token: int
    max_dynamic_patch: int = 12
    min_dynamic_patch: int = 1
    use_thumbnail: bool = True
    max_seq_length: int = 4096
    skip_bad_samples: bool = False
    num_video_frames: int = 8
    system_message: str | None = None
    dynamic_image_size: bool = True  # False: one resized tile per image
    data_augment: bool = False  # set per dataset from the meta file
    v2pe_stride: float | None = None  # V2PE: RoPE step of one image token (None = ordinary positions)

    def __post_init__(self) -> None:
        get_template(self.template)  # an unknown name fails now, listing the known ones
        if self.v2pe_stride is not None and not 0 < self.v2pe_stride <= 1:
            raise ConfigError(f"v2pe_stride must be in (0, 1], got {self.v2pe_stride}")
        for name in ("image_size", "num_image_token", "min_dynamic_patch", "max_seq_length", "num_video_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DataConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_dynamic_patch < self.min_dynamic_patch:
            raise ConfigError(f"need min_dynamic_patch ({self.min_dynamic_patch}) <= max_dynamic_patch "
                              f"({self.max_dynamic_patch})")

    @classmethod
    def from_model(cls, config: Any, **overrides: Any) -> DataConfig:
        """The data settings an `InternVLConfig` implies, with `overrides` applied."""
        kw = dict(template=config.template, image_size=config.image_size, num_image_token=config.num_image_token,
                  max_dynamic_patch=config.max_dynamic_patch, min_dynamic_patch=config.min_dynamic_patch,
                  use_thumbnail=config.use_thumbnail, system_message=config.system_message,
                  dynamic_image_size=config.dynamic_image_size, v2pe_stride=config.v2pe_stride)
        return cls(**{**kw, **overrides})


def build_sample(record: dict, tokenizer: Any, cfg: DataConfig, root: str, source: str,
                 rng: random.Random | None = None) -> Sample:
    """One JSONL record -> a tokenized, label-masked sample with its pixel values.

    Args:
        record: The parsed JSON line.
        tokenizer: An `internvl.processing.tokenizer.Tokenizer` (needs `encode_with_offsets`).
        cfg: Data settings (the template, tile size and limits).
        root: Folder the record's image / video paths are relative to.
        source: "file.jsonl:LINE", put at the start of every error message.
        rng: Randomness for `cfg.data_augment` (None: no augmentation).

    Raises:
        DataError: The record is malformed, an image is missing or unreadable, or the sample cannot fit
            `max_seq_length`; the message starts with `source`.
    """
    try:
        turns, system = _conversation(record, strip=cfg.template == "internlm2-chat")
        images, video = _media(record)
        frames = cfg.num_video_frames if video else 0
        _place_media(turns, images, isinstance(record.get("image"), str), frames)
        pixel_values, num_tiles = _pixels(images, video, root, cfg, rng)
        ids, labels = encode_turns(turns, system, num_tiles, tokenizer, cfg)
    except (DataError, ImageLoadError) as e:
        raise DataError(f"{source}: {e}") from None
    positions = None
    if cfg.v2pe_stride is not None:
        positions = v2pe_positions(ids, tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN), cfg.v2pe_stride)
    return Sample(ids, labels, pixel_values, num_tiles, source, positions)


def encode_turns(turns: list[list], system: str | None, num_tiles: list[int], tokenizer: Any, cfg: DataConfig
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(role, text) turns whose `<image>` placeholders are in place -> (ids, labels), long tensors.

    The template renders the turns (`system`, else `cfg.system_message`, else the template's default), each
    placeholder expands to its image's `num_tiles` x `num_image_token` context tokens, and the result is
    tokenized, label-masked and fitted to `max_seq_length` (`DataError` when it cannot be).
    """
    pieces = render_spans(get_template(cfg.template), turns, system if system is not None else cfg.system_message,
                          training=True)
    tiles = iter(num_tiles)
    pieces = [(expand_images(t, [next(tiles) for _ in range(t.count(IMAGE_PLACEHOLDER))], cfg.num_image_token), s)
              for t, s in pieces]
    ids, labels = _tokenize(pieces, tokenizer)
    ids, labels = _fit(ids, labels, tokenizer, cfg, num_tiles)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def _conversation(record: Any, strip: bool) -> tuple[list[list], str | None]:
    if not isinstance(record, dict):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError("'conversations' is missing or empty")
    system, first = None, 0
    if isinstance(conv[0], dict) and conv[0].get("from") == "system":
        system, first = conv[0].get("value"), 1
        if not isinstance(system, str):
            raise DataError("turn 0 (system) has a non-string 'value'")
    if first == len(conv):
        raise DataError("'conversations' has a system turn but no human/gpt turns")
    turns = []
    for i, turn in enumerate(conv[first:], first):
        who = turn.get("from") if isinstance(turn, dict) else None
        if who not in _ROLES:
            raise DataError(f"turn {i} has unknown 'from' {who!r}: expected 'human' or 'gpt' ('system' only first)")
        if _ROLES[who] != (i - first) % 2:
            raise DataError(f"turn {i} is from {who!r}: turns must alternate human, gpt, human, ...")
        text = turn.get("value")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"turn {i} ({who}) has an empty or non-string 'value'")
        turns.append([_ROLES[who], text.strip() if strip else text])
    if turns[-1][0] != 1:
        raise DataError(f"the last turn (turn {len(conv) - 1}) is from 'human': a conversation must end with 'gpt'")
    return turns, system


def _media(record: dict) -> tuple[list[str], str | None]:
    image, video = record.get("image"), record.get("video")
    images = [image] if isinstance(image, str) and image else image if isinstance(image, list) else []
    if image not in (None, "") and not isinstance(image, (str, list)):
        raise DataError(f"'image' must be a path or a list of paths, got {type(image).__name__}")
    if not all(isinstance(p, str) and p for p in images):
        raise DataError("'image' list holds an empty or non-string path")
    if video not in (None, "") and not isinstance(video, str):
        raise DataError(f"'video' must be a path, got {type(video).__name__}")
    if images and video:
        raise DataError("the record has both 'image' and 'video'")
    return images, video or None


def _place_media(turns: list[list], images: list[str], single: bool, frames: int) -> None:
    """Add the official implicit placeholders, then check there is exactly one `<image>` per image/frame."""
    first = turns[0]
    if single and IMAGE_PLACEHOLDER not in first[1]:
        first[1] = IMAGE_PLACEHOLDER + "\n" + first[1]
    if frames:
        if sum(t[1].count(VIDEO_PLACEHOLDER) for t in turns) != first[1].count(VIDEO_PLACEHOLDER) or \
                first[1].count(VIDEO_PLACEHOLDER) > 1:
            raise DataError(f"a video record has at most one {VIDEO_PLACEHOLDER}, in the first human turn")
        if VIDEO_PLACEHOLDER not in first[1]:
            first[1] = VIDEO_PLACEHOLDER + "\n" + first[1]
        first[1] = first[1].replace(VIDEO_PLACEHOLDER + "\n", VIDEO_PLACEHOLDER).replace(
            VIDEO_PLACEHOLDER, video_prompt(frames))
    if any(IMAGE_PLACEHOLDER in t[1] for t in turns if t[0] == 1):
        raise DataError(f"a gpt turn contains {IMAGE_PLACEHOLDER}; placeholders belong in human turns")
    found, wanted = sum(t[1].count(IMAGE_PLACEHOLDER) for t in turns), frames or len(images)
    if found != wanted:
        hint = " (a multi-image record needs one per image, e.g. 'Image-1: <image>\\nImage-2: <image>\\n')" \
            if len(images) > 1 else ""
        raise DataError(f"the human turns have {found} {IMAGE_PLACEHOLDER} placeholder(s) but the record has "
                        f"{wanted} {'frame' if frames else 'image'}(s){hint}")


def _pixels(images: list[str], video: str | None, root: str, cfg: DataConfig, rng: random.Random | None
            ) -> tuple[torch.Tensor | None, list[int]]:
    if video:
        pictures, max_num = read_frames(os.path.join(root, video), num_segments=cfg.num_video_frames), 1
    elif images:
        pictures = [open_image(os.path.join(root, p)) for p in images]
        max_num = per_image_tile_budget(cfg.max_dynamic_patch, len(images))
    else:
        return None, []
    tiles, counts = [], []
    for picture in pictures:
        if cfg.dynamic_image_size:
            cut = dynamic_preprocess(picture, min(cfg.min_dynamic_patch, max_num), max_num, cfg.image_size,
                                     cfg.use_thumbnail)
        else:
            cut = [picture]
        if cfg.data_augment and rng is not None:
            cut = [_jpeg(tile, rng.randint(75, 100)) for tile in cut]
        tiles += cut
        counts.append(len(cut))
    return to_pixel_values(tiles, cfg.image_size), counts


def _jpeg(tile: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    tile.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(buf).convert("RGB")


def _tokenize(pieces: list[tuple[str, bool]], tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize the whole prompt once; a token is supervised when any of its characters is."""
    text = "".join(t for t, _ in pieces)
    ids, offsets = tokenizer.encode_with_offsets(text, add_special_tokens=True)
    marks = np.zeros(len(text) + 1, dtype=np.int64)
    pos = 0
    for t, supervised in pieces:
        marks[pos + 1:pos + len(t) + 1] = supervised
        pos += len(t)
    csum = np.cumsum(marks)  # csum[e] - csum[s]: supervised characters in text[s:e]
    ids = np.asarray(ids, dtype=np.int64)
    span = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    supervised = csum[span[:, 1]] - csum[span[:, 0]] > 0
    return ids, np.where(supervised, ids, IGNORE_INDEX)


def _fit(ids: np.ndarray, labels: np.ndarray, tokenizer: Any, cfg: DataConfig, num_tiles: list[int]
         ) -> tuple[np.ndarray, np.ndarray]:
    """Check the image tokens; truncate to max_seq_length when that keeps every image and some supervision."""
    context, end = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN), tokenizer.convert_tokens_to_ids(IMG_END_TOKEN)
    want = cfg.num_image_token * sum(num_tiles)
    if int((ids == context).sum()) != want or int((ids == end).sum()) != len(num_tiles):
        raise DataError(f"the text holds literal {IMG_CONTEXT_TOKEN} / {IMG_END_TOKEN} tokens: {want} image tokens "
                        f"expected, {int((ids == context).sum())} found")
    if len(ids) > cfg.max_seq_length:
        n = cfg.max_seq_length
        if int((ids[:n] == end).sum()) != len(num_tiles):
            raise DataError(f"{len(ids)} tokens exceed max_seq_length {n}, and truncating would cut image tokens")
        ids, labels = ids[:n], labels[:n]
    if not (labels != IGNORE_INDEX).any():
        raise DataError(f"no supervised tokens within max_seq_length {cfg.max_seq_length}")
    return ids, labels
