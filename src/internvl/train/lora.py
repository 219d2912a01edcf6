"""LoRA adapters on the LLM and/or the ViT (peft underneath), adapter files, and merging into plain weights.

Spec section 5 (`use_llm_lora`, `use_backbone_lora`). The only module that imports peft. Adapters are
injected in place (`peft.inject_adapter_in_model`), so the model stays an `InternVL` and a target layer's
weights become `<name>.base_layer.weight` plus `<name>.lora_A.default.weight` / `lora_B`. Merging works on
state dicts, W + (alpha / r) * B @ A, so it serves a plain model, a DDP replica and a gathered FSDP state
alike, and a saved training checkpoint is always plain merged weights that `internvl chat` loads (the
official trainer saves unmerged LoRA weights that need a separate merge script first).

Defaults follow the official `wrap_llm_lora` / `wrap_backbone_lora`: alpha = 2 x rank, dropout 0.05,
targets every attention and MLP projection. Our decoder uses one set of names for every LLM family (the
checkpoint code maps InternLM2 `wqkv` / Phi-3 `qkv_proj` onto them), so one default list serves all.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VIT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_ADAPTER = "default"  # peft's adapter name; one adapter per part


@dataclass(frozen=True)
class LoraSpec:
    """One part's adapter: rank, alpha, dropout, and the module-name suffixes it wraps."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dropout: float = 0.05

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def lora_specs(use_llm_lora: int, use_backbone_lora: int, alpha: float | None = None, dropout: float = 0.05,
               llm_targets: list[str] | None = None, vit_targets: list[str] | None = None) -> dict[str, LoraSpec]:
    """Part name (`language_model` / `vision_model`) -> LoraSpec, for the parts given a rank > 0."""
    specs = {}
    for part, rank, targets in (("language_model", use_llm_lora, llm_targets or LLM_TARGETS),
                                ("vision_model", use_backbone_lora, vit_targets or VIT_TARGETS)):
        if rank > 0:
            specs[part] = LoraSpec(rank, float(alpha if alpha is not None else 2 * rank), tuple(targets), dropout)
    return specs


def apply_lora(model: nn.Module, specs: dict[str, LoraSpec]) -> None:
    """Inject adapters into the named parts of an `InternVL`. peft freezes the part's own weights; the
    rest of the model keeps its `requires_grad`."""
    if not specs:
        return  # peft (and the transformers it imports) costs seconds to import: only when needed
    from peft import LoraConfig, inject_adapter_in_model
    for part, spec in specs.items():
        module = getattr(model, part)
        names = {n for n, m in module.named_modules() if isinstance(m, nn.Linear)}
        missing = [t for t in spec.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ConfigError(f"LoRA targets {missing} match no linear layer of {part} "
                              f"(its linear layers end in: {sorted({n.rsplit('.', 1)[-1] for n in names})})")
        cfg = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                         target_modules=list(spec.target_modules))
        inject_adapter_in_model(cfg, module, adapter_name=_ADAPTER)


def is_lora_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def merged_state_dict(state: dict[str, torch.Tensor], specs: dict[str, LoraSpec]) -> dict[str, torch.Tensor]:
    """A LoRA model's state dict -> the plain model's: W + scaling * B @ A at every adapted layer.

    Keys `x.base_layer.weight` become `x.weight`; adapter tensors disappear. The merge is computed in fp32
    and cast back to the base weight's dtype. Works on any full (unsharded) state dict.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if is_lora_key(key):
            continue
        if ".base_layer." not in key:
            out[key] = t
            continue
        prefix, leaf = key.split(".base_layer.")
        if leaf == "weight":
            a, b = state[f"{prefix}.lora_A.{_ADAPTER}.weight"], state[f"{prefix}.lora_B.{_ADAPTER}.weight"]
            scaling = specs[prefix.split(".", 1)[0]].scaling
            t = (t.float() + scaling * (b.float() @ a.float())).to(t.dtype)
        out[f"{prefix}.{leaf}"] = t
    return out


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor (adapters and any unfrozen base weights) by name, on the CPU."""
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], specs: dict[str, LoraSpec],
                 base_model: str, seed: int) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (the trained tensors, InternVL names).

    `tensors` holds everything that trained, not only the adapters (e.g. mlp1 in a LoRA stage-2 run), so
    base + adapter reproduces the trained model exactly.
    """
    from safetensors.torch import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    cfg = {"format": "internvl-lora", "base_model": base_model, "seed": seed,
           "parts": {part: {**asdict(s), "target_modules": list(s.target_modules)} for part, s in specs.items()}}
    (d / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return d


def read_adapter(directory: str | os.PathLike) -> tuple[dict, dict[str, LoraSpec], dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, specs by part, trained tensors) of an adapter directory."""
    from safetensors.torch import load_file
    d = Path(directory)
    if not (d / ADAPTER_CONFIG).exists() or not (d / ADAPTER_WEIGHTS).exists():
        raise CheckpointError(f"{d}: not a LoRA adapter directory (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    specs = {part: LoraSpec(s["rank"], s["alpha"], tuple(s["target_modules"]), s.get("dropout", 0.0))
             for part, s in cfg.get("parts", {}).items()}
    return cfg, specs, load_file(str(d / ADAPTER_WEIGHTS))


def load_trained_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], check_trainable: bool = True) -> None:
    """Copy an adapter's tensors into a model with the same adapters. With `check_trainable`, every trainable
    parameter must be among them (a resumed run has the same freezing as the one that saved)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise CheckpointError(f"adapter tensors not in the model: {unknown[:6]}"
                              + (f" (+{len(unknown) - 6} more)" if len(unknown) > 6 else ""))
    trainable = {n for n, p in params.items() if p.requires_grad}
    if check_trainable and (missing := sorted(trainable - set(tensors))):
        raise CheckpointError(f"the adapter lacks trained tensors {missing[:6]} (trained with other freezing flags?)")
    with torch.no_grad():
        for name, t in tensors.items():
            if tuple(t.shape) != tuple(params[name].shape):
                raise CheckpointError(f"adapter tensor {name} has shape {tuple(t.shape)}, the model "
                                      f"{tuple(params[name].shape)}")
            params[name].copy_(t)


def merge_adapter(adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, model: str | None = None,
                  tokenizer: str | None = None) -> Path:
    """`internvl merge-lora`: base model + adapter directory -> a plain official-layout checkpoint.

    Args:
        adapter_dir: An `adapter/` directory written by training.
        output_dir: Where the merged checkpoint goes (written atomically).
        model: The base model; default the one recorded in adapter_config.json (a preset is rebuilt from
            the recorded seed).
        tokenizer: Tokenizer directory to save beside the weights; default the base checkpoint's, or, for a
            preset base, the training checkpoint that holds the adapter.
    """
    import tempfile

    from ..checkpoint.loader import OFFICIAL, save_checkpoint
    from ..presets import PRESETS
    from .state import load_start_model, plain_model
    meta, specs, tensors = read_adapter(adapter_dir)
    base = model or meta["base_model"]
    if tokenizer is None and base in PRESETS:
        tokenizer = str(Path(adapter_dir).resolve().parent)
    net, tok, source = load_start_model(base, tokenizer, int(meta.get("seed", 0)))
    apply_lora(net, specs)
    load_trained_tensors(net, tensors, check_trainable=False)
    merged = plain_model(net.config, merged_state_dict(net.state_dict(), specs))
    with tempfile.TemporaryDirectory() as tmp:
        side = source if tokenizer is None else Path(tmp)
        if tokenizer is not None:
            tok.save_pretrained(tmp)
        return save_checkpoint(merged, output_dir, OFFICIAL, side_files_from=side)
