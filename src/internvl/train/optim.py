"""What trains and how it steps: freezing per part, stage presets, AdamW parameter groups, cosine schedule.

Spec section 5. The three parts of InternVL (`vision_model`, `mlp1`, `language_model`) freeze independently,
as the official `freeze_backbone` / `freeze_mlp` / `freeze_llm` flags do; `unfreeze_vit_layers` then gives
back the last layers of a frozen ViT. The stage presets are the InternVL 2.5 recipe, plus a vision pre-training
stage 0 (ViT + projector, and the LLM's token embeddings as its text encoder; `region_align.py`): stage 1 trains the
projector alone (MLP warmup), stage 1.5 the ViT and projector (ViT incremental learning), stage 2 the whole
model (or LoRA adapters; see `lora.py`). LoRA is applied between freezing and `unfreeze_vit_layers`, the
official order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

# stage -> (freeze_backbone, freeze_mlp, freeze_llm)
STAGE_FREEZING = {"0": (False, False, True), "1": (True, False, True), "1.5": (False, False, True),
                  "2": (False, False, False)}
PARTS = ("vision_model", "mlp1", "language_model")
FLASH_PARTS = ("mlp2", "pooling_before_gating", "gating")  # InternVL3.5-Flash only (ViCO trains them)


@dataclass(frozen=True)
class Freezing:
    """Which parts stay fixed. Explicit flags add to a stage preset's choice; they never unfreeze."""

    backbone: bool = False
    mlp: bool = False
    llm: bool = False
    unfreeze_vit_layers: int = 0

    @classmethod
    def resolve(cls, stage: str | None, freeze_backbone: bool = False, freeze_mlp: bool = False,
                freeze_llm: bool = False, unfreeze_vit_layers: int = 0) -> Freezing:
        b, m, l = STAGE_FREEZING[stage] if stage is not None else (False, False, False)
        return cls(b or freeze_backbone, m or freeze_mlp, l or freeze_llm, unfreeze_vit_layers)


def apply_freezing(model: nn.Module, freezing: Freezing) -> None:
    """Set `requires_grad` on every parameter of an `InternVL` from `freezing` (everything else trains)."""
    frozen = {"vision_model": freezing.backbone, "mlp1": freezing.mlp, "language_model": freezing.llm}
    for part, is_frozen in frozen.items():
        for p in getattr(model, part).parameters():
            p.requires_grad_(not is_frozen)


def unfreeze_last_vit_layers(model: nn.Module, n: int) -> None:
    """Make the last |n| ViT layers trainable (base weights and any LoRA weights alike)."""
    if n == 0:
        return
    layers = model.vision_model.encoder.layers
    if abs(n) > len(layers):
        raise ConfigError(f"--unfreeze-vit-layers {n}: the ViT has only {len(layers)} layers")
    for p in layers[-abs(n):].parameters():
        p.requires_grad_(True)


def set_frozen_parts_eval(model: nn.Module) -> None:
    """Put fully frozen parts in eval mode (no drop path in a frozen ViT, no dropout in a frozen Flash
    branch or router), as the official script does."""
    for part in PARTS + FLASH_PARTS:
        module = getattr(model, part, None)
        if module is not None and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable parameter count per part, plus the total and the model size."""
    out = {part: sum(p.numel() for p in getattr(model, part).parameters() if p.requires_grad) for part in PARTS}
    out["trainable"] = sum(out.values())
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # biases, norm weights, layer scales (1-D) and the ViT's class/position embeddings are not decayed
    return p.ndim < 2 or name.endswith(("class_embedding", "position_embedding"))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: with and without weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("nothing to train: every parameter is frozen (check --stage and the --freeze-* flags)")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the multi-tensor (foreach) update, the fast one on CPU and GPU."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=True)


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr for 0-based `step`: linear warmup (never 0), then cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `cosine_lr_factor`; `warmup_ratio` of `total_steps` (rounded up) warm up."""
    warmup = math.ceil(warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_lr_factor(step, total_steps, warmup, min_ratio))
