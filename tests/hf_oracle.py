"""Tiny random InternVL models built by transformers (the oracle), shared by the parity tests."""

from __future__ import annotations

import torch

FAMILIES = ("qwen2", "qwen3", "llama", "qwen3_moe", "phi3")
IMAGE_TOKEN_ID = 7
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              image_size=64, patch_size=8, attention_bias=True)


def text_config(family: str) -> dict:
    tc = dict(model_type=family, vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family in ("qwen3", "qwen3_moe"):
        tc["head_dim"] = 16
    if family == "qwen3_moe":
        tc.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)
    if family == "llama":
        tc.update(rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    return tc


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Random weights everywhere, norms and layer scales included, so no parameter is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if p.ndim == 1 and "norm" in _ else 0.0))


def make_hf(family: str, vision: dict | None = None, **top) -> torch.nn.Module:
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    cfg = InternVLConfig(vision_config=vision or VISION, text_config=text_config(family),
                         image_token_id=IMAGE_TOKEN_ID, tie_word_embeddings=False, **top)
    model = InternVLForConditionalGeneration(cfg).eval()
    randomize(model)
    return model


def gpt_oss_text_config(window: int = 32, layers: int = 4, **overrides) -> dict:
    """A tiny GPT-OSS text config: sliding (first) / full layers alternating, YaRN without truncation."""
    tc = dict(model_type="gpt_oss", vocab_size=160, hidden_size=64, intermediate_size=64, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
              sliding_window=window, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
              rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                               "truncate": False, "original_max_position_embeddings": 64, "rope_theta": 150000.0})
    tc.update(overrides)
    return tc


def make_hf_gpt_oss(tie_word_embeddings: bool = False, **text) -> torch.nn.Module:
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    cfg = InternVLConfig(vision_config=VISION, text_config=gpt_oss_text_config(**text), image_token_id=IMAGE_TOKEN_ID,
                         tie_word_embeddings=tie_word_embeddings)
    model = InternVLForConditionalGeneration(cfg).eval()
    randomize(model)
    return model
