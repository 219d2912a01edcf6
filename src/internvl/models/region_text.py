"""Region-text matching: image tokens against phrase embeddings, the math of stage 0 (`train/region_align.py`)
and of `model.encode_image` / `encode_text` / `similarity` (`chat.py`).

A phrase's embedding is the mean of its token embeddings in the LLM's own table, so no separate text tower
exists: after stage 0 an image token that holds an object's center points at the words that name it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE = 16.0  # cosine similarities in [-1, 1] -> logits in [-16, 16] against the fixed 0 of "nothing"


def phrase_embeddings(embed_tokens: nn.Embedding, phrase_ids: torch.Tensor, phrase_mask: torch.Tensor
                      ) -> torch.Tensor:
    """(P, L) ids -> (P, D): the mean token embedding of each phrase (`phrase_mask` marks real tokens)."""
    m = phrase_mask.to(embed_tokens.weight.dtype)[..., None]
    return (embed_tokens(phrase_ids) * m).sum(1) / m.sum(1).clamp_min(1)


def cosine(image_tokens: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
    """(..., D) x (P, D) -> (..., P) cosine similarities, in fp32."""
    return F.normalize(image_tokens.float(), dim=-1) @ F.normalize(phrases.float(), dim=-1).T


def region_logits(image_tokens: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
    """(tiles, tokens, D) x (P, D) -> (tiles, tokens, 1 + P): [nothing = 0, s * cos(token, phrase)]."""
    sim = cosine(image_tokens, phrases)
    return torch.cat([sim.new_zeros(*sim.shape[:-1], 1), LOGIT_SCALE * sim], dim=-1)
