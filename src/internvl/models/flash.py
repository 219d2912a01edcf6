"""InternVL3.5-Flash: the visual resolution router (ViR) and its compressed branch (internvl35.md section 1).

A Flash checkpoint adds three modules to InternVL3.5, under their official names and `nn.Sequential` indices:
`mlp2` (the compressed branch: the ViT grid pixel-shuffled by downsample_ratio^2 in one go, 64 tokens per
448px tile instead of 256), `pooling_before_gating` (one learned query cross-attending to the tile's ViT
tokens) and `gating` (four residual MLP blocks and a two-way head; class 0 means "compress").

Routing follows the official `generate_flash`: every tile is scored on its own; over the tiles of one
request, a tile is compressed when its compress probability is above the request's `flash_relative_threshold`
quantile and at least `flash_absolute_threshold`. The strict `>` means a single tile (and the lowest-scored
tiles of any request) always keeps its full tokens. The prompt keeps being built with the full count per
tile; a compressed tile's block then drops its trailing `<IMG_CONTEXT>` slots and positions stay dense.

The pooling reproduces the official module exactly, quirk included: `attn1`/`norm1` once, then
`attn2`/`norm2` three times; `attn3`, `attn4`, `norm3`, `norm4` are loaded and never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ImageTokenMismatchError
from ..precision import compute_dtype

VIR_MODES = ("auto", "off", "always")
POOLING_HEADS = 16


class CrossAttentionPooling(nn.Module):
    """A tile's ViT tokens (T, L, V) -> one vector per tile (T, V)."""

    def __init__(self, dim: int, num_heads: int = POOLING_HEADS) -> None:
        super().__init__()
        self.query_token = nn.Parameter(torch.zeros(1, dim))
        for i in range(1, 5):
            setattr(self, f"attn{i}", nn.MultiheadAttention(dim, num_heads, batch_first=True))
            setattr(self, f"norm{i}", nn.LayerNorm(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = tokens.to(compute_dtype(self.query_token.dtype))
        out = self.query_token[None].expand(kv.shape[0], -1, -1)  # (T, 1, V)
        out = self.norm1(self.attn1(out, kv, kv, need_weights=False)[0])
        for _ in range(3):  # the official module reuses attn2/norm2: attn3/attn4 never run
            out = self.norm2(self.attn2(out, kv, kv, need_weights=False)[0])
        return out.squeeze(1)


def _gating_block(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout), nn.LayerNorm(dim))


class Gating(nn.Module):
    """Pooled tile vectors (T, V) -> router logits (T, 2); softmax column 0 is the probability to compress."""

    def __init__(self, dim: int, expansion: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"block{i}", _gating_block(dim, dim * expansion, dropout))
        self.gate = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = x + getattr(self, f"block{i}")(x)
        return self.gate(x)


def build_mlp2(vit_hidden: int, llm_hidden: int, downsample_ratio: float, dropout: float = 0.1) -> nn.Sequential:
    """The compressed branch's projector, keys `mlp2.0/1/4/7` (dropouts at 3 and 6 hold no weights)."""
    dim = vit_hidden * int(round(1 / downsample_ratio)) ** 4
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * llm_hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(2 * llm_hidden, 2 * llm_hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(2 * llm_hidden, llm_hidden))


def route(compress_prob: torch.Tensor, relative: float, absolute: float) -> torch.Tensor:
    """Per-tile decisions (T,) bool for one request's tiles, as the official `generate_flash` decides."""
    threshold = torch.quantile(compress_prob.float(), relative)
    return (compress_prob > threshold) & (compress_prob >= absolute)


def resolve_vir(cfg, vir: str) -> str:
    """`--vir auto|off|always` for a model config -> what to compute: "off", "always" or "route".

    auto routes where the config's flash_mode is true and keeps every tile whole otherwise."""
    if vir not in VIR_MODES:
        raise ConfigError(f"vir must be one of {', '.join(VIR_MODES)}, got {vir!r}")
    if vir == "always" and not cfg.has_vir:
        raise ConfigError("--vir always needs an InternVL3.5-Flash checkpoint (one with mlp2); this model has none")
    if vir == "off" or (vir == "auto" and not cfg.flash_mode):
        return "off"
    if vir == "always":
        return "always"
    if cfg.flash_relative_threshold is None or cfg.flash_absolute_threshold is None:
        raise ConfigError("this Flash config has no flash_relative_threshold / flash_absolute_threshold to route "
                          "with; set them in config.json, or pass --vir off or --vir always")
    return "route"


@dataclass
class TileFeatures:
    """Encoded tiles before the routing decision: each branch's tokens and the router's probabilities
    (None where the mode does not need them). Chunks of one request's tiles concatenate with `cat`."""

    full: torch.Tensor | None  # (T, n, D) from mlp1
    small: torch.Tensor | None  # (T, n / 4, D) from mlp2
    probs: torch.Tensor | None  # (T, 2) router softmax; column 0 = compress

    @property
    def tiles(self) -> int:
        return (self.full if self.full is not None else self.small).shape[0]

    @staticmethod
    def cat(parts: Sequence[TileFeatures]) -> TileFeatures:
        def join(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)
        return TileFeatures(join("full"), join("small"), join("probs"))


@dataclass
class ImageFeatures:
    """A request's image tokens as the LLM reads them, and how each tile was routed."""

    tokens: torch.Tensor  # (M, D): every tile's tokens in tile order (n per kept tile, n / 4 per compressed one)
    compressed: torch.Tensor  # (T,) bool
    probs: torch.Tensor | None = None  # (T, 2) where the router ran

    @property
    def tiles(self) -> int:
        return self.compressed.shape[0]


def select(features: TileFeatures, mode: str, relative: float | None = None, absolute: float | None = None
           ) -> ImageFeatures:
    """Decide every tile of one request (`mode` from `resolve_vir`) and keep each tile's chosen tokens."""
    t = features.tiles
    if mode == "off":
        return ImageFeatures(features.full.reshape(-1, features.full.shape[-1]), torch.zeros(t, dtype=torch.bool))
    if mode == "always":
        return ImageFeatures(features.small.reshape(-1, features.small.shape[-1]), torch.ones(t, dtype=torch.bool))
    compressed = route(features.probs[:, 0], relative, absolute).cpu()
    return ImageFeatures(choose(features.full, features.small, compressed), compressed, features.probs)


def choose(full: torch.Tensor, small: torch.Tensor, compressed: torch.Tensor | Sequence[bool]) -> torch.Tensor:
    """(M, D): tile i's `small` tokens where `compressed[i]`, its `full` tokens elsewhere, in tile order."""
    flags = [bool(c) for c in compressed]
    return torch.cat([small[i] if c else full[i] for i, c in enumerate(flags)]) if flags else full.reshape(
        0, full.shape[-1])


def compress_prompt(ids: Sequence[int], compressed: Sequence[bool], image_token_id: int, per_tile: int) -> list[int]:
    """Drop the unused `<IMG_CONTEXT>` slots of compressed tiles: tile k's block of `per_tile` slots (blocks in
    order over the prompt's image-token runs) keeps its first `per_tile // 4` when `compressed[k]`.

    Raises:
        ImageTokenMismatchError: A run of image tokens is not a whole number of tiles, or the prompt holds a
            different number of tiles than `compressed` has decisions.
    """
    return [tok for tok, keep in zip(ids, keep_mask(ids, compressed, image_token_id, per_tile)) if keep]


def keep_mask(ids: Sequence[int], compressed: Sequence[bool], image_token_id: int, per_tile: int) -> list[bool]:
    """Which positions of `ids` `compress_prompt` keeps (same rules, same errors)."""
    flags = [bool(c) for c in compressed]
    keep_small = per_tile // 4
    out: list[bool] = []
    slot = run = 0
    for i, tok in enumerate(ids):
        keep = True
        if tok == image_token_id:
            run += 1
            tile, offset = divmod(slot, per_tile)
            slot += 1
            keep = not (tile < len(flags) and flags[tile] and offset >= keep_small)
        else:
            if run % per_tile:
                raise ImageTokenMismatchError(f"a run of {run} image tokens ending at position {i} is not a whole "
                                              f"number of {per_tile}-token tiles")
            run = 0
        out.append(keep)
    if run % per_tile:
        raise ImageTokenMismatchError(f"a run of {run} image tokens at the prompt's end is not a whole number of "
                                      f"{per_tile}-token tiles")
    if slot != per_tile * len(flags):
        raise ImageTokenMismatchError(f"the prompt has {slot // per_tile} tiles of {per_tile} image tokens but "
                                      f"{len(flags)} routing decisions")
    return out
