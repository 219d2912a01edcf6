"""The InternVL model: InternViT -> pixel shuffle -> mlp1 -> image tokens scattered into the decoder input.

Spec section 1. Submodule names equal the official checkpoint's top level (`vision_model`, `mlp1`,
`language_model`). Image features replace, in order, the embeddings at `<IMG_CONTEXT>` positions; a count
mismatch raises `ImageTokenMismatchError` with both numbers instead of silently truncating (the official
training code truncates and zeroes the loss). A Flash config adds `mlp2`, `pooling_before_gating` and `gating`
(`flash.py`); `encode_images` then routes each tile to its full or its compressed tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..config import InternVLConfig
from ..errors import ImageTokenMismatchError
from ..precision import PrecisionPlan, compute_dtype, compute_in
from .decoder import Decoder, KVCache, causal_mask
from .flash import CrossAttentionPooling, Gating, ImageFeatures, TileFeatures, build_mlp2, resolve_vir, select
from .projector import build_mlp1, pixel_shuffle, project
from .v2pe import v2pe_positions
from .vision import InternViT


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab)
    hidden_states: torch.Tensor | None = None  # (B, T, D), final-norm output


class InternVL(nn.Module):
    # Inference only (the CLI and server set it): the dtype each phase computes in; None = the weights' dtype.
    precision: PrecisionPlan | None = None

    def __init__(self, cfg: InternVLConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision_model = InternViT(cfg.vision)
        self.mlp1 = build_mlp1(cfg.vision.hidden_size, cfg.llm.hidden_size, cfg.downsample_ratio)
        self.language_model = Decoder(cfg.llm)
        if cfg.has_vir:
            v = cfg.vision.hidden_size
            self.mlp2 = build_mlp2(v, cfg.llm.hidden_size, cfg.downsample_ratio)
            self.pooling_before_gating = CrossAttentionPooling(v)
            self.gating = Gating(v)
        self.img_context_token_id: int | None = cfg.image_token_id

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, only: tuple[str, ...] | None = None) -> None:
        """Fresh weights for training from scratch: N(0, std) matrices, zero biases, unit norms, layer scale
        at its configured init (the official models' scheme; PyTorch's defaults suit none of these layers).
        `only`: initialise just the parameters whose names start with one of these prefixes."""
        layer_norms = {f"{m}.{n}" for m, mod in self.named_modules() if isinstance(mod, nn.LayerNorm)
                       for n, _ in mod.named_parameters(recurse=False)}
        for name, p in self.named_parameters():
            if only is not None and not name.startswith(only):
                continue
            if name.endswith((".ls1", ".ls2")):
                p.fill_(self.config.vision.initializer_factor)
            elif p.ndim == 1 and ("norm" in name or name.startswith("mlp1.0") or name in layer_norms):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)

    @property
    def num_image_token(self) -> int:
        return self.config.num_image_token

    def _vision_precision(self):
        """The vision phase of `self.precision`: its ops computed in the plan's vision dtype."""
        plan = self.precision
        return contextlib.nullcontext() if plan is None else compute_in(plan.vision, plan.weights)

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles (N, 3, S, S) -> image tokens (N, num_image_token, D_llm)."""
        with self._vision_precision():
            dtype = compute_dtype(self.mlp1[1].weight.dtype)
            vit = self.vision_model(pixel_values.to(dtype), self.config.select_layer)
            return project(vit[:, 1:], self.mlp1, self.config.downsample_ratio, self.config.ps_version)

    def encode_tiles(self, pixel_values: torch.Tensor, mode: str = "off") -> TileFeatures:
        """Tiles (N, 3, S, S) -> what routing mode `mode` ("off", "always", "route"; see `flash.resolve_vir`)
        needs: the full tokens, the compressed tokens, the router's probabilities ("both": the two branches,
        no router, for training). Like the official Flash code, the compressed branch and the router read the
        ViT's last layer."""
        if mode == "off":
            return TileFeatures(self.extract_feature(pixel_values), None, None)
        with self._vision_precision():
            return self._encode_routed(pixel_values, mode)

    def _encode_routed(self, pixel_values: torch.Tensor, mode: str) -> TileFeatures:
        cfg = self.config
        vit = self.vision_model(pixel_values.to(compute_dtype(self.mlp1[1].weight.dtype)))[:, 1:]
        n, t, c = vit.shape
        side = int(t ** 0.5)
        grid = vit.reshape(n, side, side, c)
        small = pixel_shuffle(grid, cfg.downsample_ratio ** 2, cfg.ps_version)
        small = self.mlp2(small.reshape(n, -1, small.shape[-1]))
        if mode == "always":
            return TileFeatures(None, small, None)
        full = pixel_shuffle(grid, cfg.downsample_ratio, cfg.ps_version)
        full = self.mlp1(full.reshape(n, -1, full.shape[-1]))
        if mode == "both":
            return TileFeatures(full, small, None)
        probs = torch.softmax(self.gating(self.pooling_before_gating(vit)), dim=-1)
        return TileFeatures(full, small, probs)

    def route_features(self, features: TileFeatures, mode: str) -> ImageFeatures:
        """One request's encoded tiles -> its image tokens, each tile routed (thresholds from the config)."""
        cfg = self.config
        return select(features, mode, cfg.flash_relative_threshold, cfg.flash_absolute_threshold)

    def encode_images(self, pixel_values: torch.Tensor, vir: str = "auto") -> ImageFeatures:
        """One request's tiles (N, 3, S, S) -> its image tokens as the LLM reads them; `vir` is auto (the
        config's flash_mode decides), off (every tile whole) or always (every tile compressed)."""
        mode = resolve_vir(self.config, vir)
        return self.route_features(self.encode_tiles(pixel_values, mode), mode)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, T, D) with image tokens written over the `<IMG_CONTEXT>` positions.

        `image_features` is (tiles, tokens per tile, D), or (M, D) when tiles differ in length (Flash)."""
        embeds = self.language_model.embed_tokens(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.extract_feature(pixel_values)
        if self.img_context_token_id is None:
            if image_features is None:
                return embeds
            raise ImageTokenMismatchError("model.img_context_token_id is unset: cannot place image features "
                                          "(load through internvl.from_pretrained or set it from the tokenizer)")
        slots = input_ids == self.img_context_token_id
        n_slots = int(slots.sum())
        flat = None if image_features is None else image_features.reshape(-1, embeds.shape[-1])
        n_feats = 0 if flat is None else flat.shape[0]
        if n_slots != n_feats:
            per = self.num_image_token
            raise ImageTokenMismatchError(
                f"the prompt has {n_slots} <IMG_CONTEXT> tokens ({n_slots / per:g} tiles of {per}) but "
                f"{n_feats} image features were given ({n_feats / per:g} tiles)")
        if n_feats:
            embeds = embeds.masked_scatter(slots[..., None], flat.to(embeds.dtype))
        return embeds

    def rope_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """RoPE positions (B, T) of whole prompts: 0, 1, ... over each row's real tokens (left padding gets 0),
        or with `config.v2pe_stride` the V2PE positions (float32; `models/v2pe.py`)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.config.v2pe_stride is None:
            return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        if self.img_context_token_id is None:
            raise ImageTokenMismatchError("V2PE needs model.img_context_token_id (the <IMG_CONTEXT> id) to find images")
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            real = attention_mask[row].bool()
            out[row, real] = v2pe_positions(input_ids[row, real], self.img_context_token_id, self.config.v2pe_stride)
        return out

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, past_len: int = 0,
                image_features: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None
                ) -> ModelOutput:
        """input_ids (B, T) [+ pixel_values (N, 3, S, S)] -> logits (B, T, vocab).

        `attention_mask` (B, past_len + T) marks real tokens with 1 and padding with 0; positions then
        count only real tokens, so a left-padded row gets the same logits as the unpadded prompt. With V2PE
        (`config.v2pe_stride`) a whole prompt (past_len 0) gets V2PE positions; later steps pass `position_ids`.
        `inputs_embeds` skips the embedding and image merge (decode steps pass plain token embeddings).
        """
        embeds = self.embed(input_ids, pixel_values, image_features) if inputs_embeds is None else inputs_embeds
        t = input_ids.shape[1]
        if position_ids is None and self.config.v2pe_stride is not None:
            if past_len:
                raise ValueError("with V2PE, steps after the prompt need explicit position_ids")
            position_ids = self.rope_positions(input_ids, attention_mask)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -t:]
            else:
                position_ids = torch.arange(past_len, past_len + t, device=input_ids.device)[None].expand(
                    input_ids.shape[0], -1)
        mask = causal_mask(attention_mask, t, past_len)
        hidden = self.language_model(embeds, position_ids, mask, cache)
        return ModelOutput(logits=self.language_model.logits(hidden), hidden_states=hidden)
