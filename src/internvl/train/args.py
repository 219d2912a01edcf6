"""The training run's settings: one dataclass, and the `internvl train` / `internvl merge-lora` flags made from it.

Spec section 5. Flag names follow the official `internvl_chat_finetune.py` arguments where one exists
(`--freeze-llm`, `--use-llm-lora`, `--unfreeze-vit-layers`, `--max-dynamic-patch`, ...), with dashes. Library
code takes a `TrainConfig`, never an `argparse.Namespace`, so tests build one directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

STAGES = ("0", "1", "1.5", "2")
VICO_STAGES = ("consistency", "router")
PARALLEL = ("fsdp", "ddp")
REDUCTIONS = ("token", "sample", "square")
METHODS = ("sft", "mpo")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    model: str = _opt(None, "checkpoint directory or Hub repo id to fine-tune, or a preset name (random init; "
                            "then --tokenizer is required)", required=True, metavar="DIR|REPO|PRESET")
    meta_path: str = _opt(None, "official meta JSON: {name: {root, annotation, repeat_time, ...}}", required=True,
                          metavar="JSON")
    output_dir: str = _opt(None, "where checkpoint-STEP/ dirs, metrics.jsonl and loss_curve.png go", required=True,
                           metavar="DIR")
    tokenizer: str | None = _opt(None, "tokenizer directory (default: the --model checkpoint's); 'byte' for the "
                                       "byte-level test tokenizer", metavar="DIR")
    method: str = _opt("sft", "sft: supervised fine-tuning on conversations; mpo: mixed preference optimisation on "
                              "MMPR pairs (question, chosen, rejected)", choices=METHODS)
    # what trains
    stage: str | None = _opt(None, "preset: 0 = vision pre-training on grounding data (ViT + projector + token "
                                    "embeddings, region-text alignment), 1 = projector only, 1.5 = ViT + projector, "
                                    "2 = everything (or LoRA)",
                             choices=STAGES)
    freeze_llm: bool = _opt(False, "freeze the language model")
    freeze_backbone: bool = _opt(False, "freeze the vision tower (InternViT)")
    freeze_mlp: bool = _opt(False, "freeze the projector (mlp1)")
    unfreeze_vit_layers: int = _opt(0, "train the last N ViT layers even when the ViT is frozen (a negative N "
                                       "means the same, as the official layers[N:] slice)")
    use_llm_lora: int = _opt(0, "LoRA rank on the LLM (0 = no LoRA); the LLM's own weights are then frozen")
    use_backbone_lora: int = _opt(0, "LoRA rank on the ViT (0 = no LoRA)")
    lora_alpha: float | None = _opt(None, "LoRA alpha (default: 2 x rank, as the official scripts)")
    lora_dropout: float = _opt(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] | None = _opt(None, "LLM module names for LoRA (default: q/k/v/o_proj, "
                                                       "gate/up/down_proj)", nargs="+")
    backbone_lora_target_modules: list[str] | None = _opt(None, "ViT module names for LoRA (default: attn.qkv, "
                                                                "attn.proj, mlp.fc1, mlp.fc2)", nargs="+")
    drop_path_rate: float | None = _opt(None, "ViT stochastic depth (default: the model config's)")
    # ViCO: the InternVL3.5-Flash training stages (train/vico.py)
    vico: str | None = _opt(None, "ViCO stage for InternVL3.5-Flash: consistency (KL to a frozen reference reading "
                                  "full tiles, compression drawn per sample; a plain InternVL gains mlp2 and the "
                                  "router) or router (only the router trains, on loss-ratio labels)",
                            choices=VICO_STAGES)
    vico_reference: str | None = _opt(None, "the frozen reference model of --vico (default: --model; the router "
                                            "stage needs the model the consistency stage started from)",
                                      metavar="DIR|REPO")
    vico_compress_prob: float = _opt(0.5, "--vico consistency: probability that a sample's tiles are compressed")
    vico_mixed_prob: float = _opt(0.0, "--vico consistency: probability that a sample draws a rate per tile (each "
                                       "compressed with --vico-compress-prob), the mixes routing makes at "
                                       "inference; 0 (the paper): one rate for all its tiles")
    router_percentile: float = _opt(50.0, "--vico router: a tile whose loss ratio is below this percentile of the "
                                          "window is labelled compress")
    router_window: int = _opt(2048, "--vico router: loss ratios of this many recent tiles set the percentile")
    flash_relative_threshold: float | None = _opt(None, "--vico: the Flash config's relative routing threshold to "
                                                        "write (default: the model's, else 0)")
    flash_absolute_threshold: float | None = _opt(None, "--vico: the Flash config's absolute routing threshold to "
                                                        "write (default: the model's, else 0.5)")
    # optimisation
    lr: float = _opt(2e-5, "peak learning rate (AdamW)", aliases=("--learning-rate",))
    weight_decay: float = _opt(0.05, "AdamW weight decay (not applied to biases, norms, layer scales, embeddings "
                                     "of positions)")
    warmup_ratio: float = _opt(0.03, "share of the steps with a linear warmup before the cosine decay")
    min_lr_ratio: float = _opt(0.0, "the cosine decays to lr x this")
    max_steps: int | None = _opt(None, "optimizer steps to run (overrides --num-train-epochs)")
    num_train_epochs: float = _opt(1.0, "passes over the data (when --max-steps is not given)")
    per_device_batch_size: int = _opt(1, "samples per micro-batch per process (packed: samples packed together)",
                                      aliases=("--per-device-train-batch-size",))
    gradient_accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    max_grad_norm: float = _opt(1.0, "clip the global gradient norm to this (0 = no clipping)")
    bf16: bool = _opt(False, "bf16 autocast (weights and optimizer state stay fp32)")
    grad_checkpoint: bool = _opt(False, "recompute each ViT / decoder layer in backward (saves activation memory)")
    loss_reduction: str = _opt("square", "per-sample token weighting: token (1), sample (1/n), square (1/sqrt n)",
                               choices=REDUCTIONS)
    # data
    packed: bool = _opt(False, "pack the samples of a micro-batch into rows of --max-packed-tokens",
                        aliases=("--use-packed-ds",))
    max_packed_tokens: int = _opt(4096, "tokens per packed row")
    max_seq_length: int = _opt(4096, "longest sample in tokens (longer ones are truncated)")
    max_dynamic_patch: int | None = _opt(None, "most tiles per image (default: the model config's)")
    v2pe_stride: float | None = _opt(None, "V2PE: each image token advances the RoPE position by this (0 < X <= 1; "
                                           "1 = ordinary positions); recorded in the saved checkpoints' config "
                                           "(default: the model config's, usually off)")
    num_workers: int = _opt(0, "DataLoader worker processes (0 = load in the training process)")
    skip_bad_samples: bool = _opt(False, "log and skip malformed records instead of stopping")
    # preference optimisation (--method mpo); defaults are the official MPO scripts'
    loss_type: str = _opt("sigmoid,bco_pair", "MPO: comma-separated preference losses (sigmoid, bco_pair, ipo, hinge, "
                                              "sft)", metavar="TYPES")
    loss_weights: str | None = _opt(None, "MPO: comma-separated weight per loss type (default 0.8,0.2 for "
                                          "sigmoid,bco_pair, else 1 each)", metavar="WEIGHTS")
    beta: float = _opt(0.1, "MPO: beta, the scale of the policy / reference log-ratio")
    rpo_alpha: float | None = _opt(1.0, "MPO: weight of the SFT term (token-mean NLL of the chosen responses) "
                                        "added to every pair (0 = none)")
    ref_model: str | None = _opt(None, "MPO: reference model (default: a frozen copy of --model, the starting "
                                       "checkpoint)", metavar="DIR|REPO|PRESET")
    precompute_ref: bool = _opt(False, "MPO: compute the reference log-probs of every pair once before training "
                                       "and free the reference model (one model in memory instead of two)")
    # saving, logging, running
    save_steps: int = _opt(500, "save a checkpoint every N steps (0 = only at the end)")
    save_total_limit: int = _opt(2, "keep the newest N checkpoints (0 = keep all)")
    resume: bool = _opt(False, "continue from the newest checkpoint in --output-dir (model, optimizer, schedule, "
                               "data position, RNG)")
    seed: int = _opt(0, "seed for initialisation, data order and dropout")
    log_steps: int = _opt(1, "write metrics every N steps")
    parallel: str = _opt("fsdp", "multi-process strategy under torchrun: FSDP2 (fully_shard) or DDP",
                         choices=PARALLEL)
    device: str | None = _opt(None, "cpu or cuda (default: cuda when available)")
    progress: bool = _opt(True, "tqdm progress bar on rank 0 (--no-progress to hide)")
    max_steps_this_run: int | None = _opt(None, "stop (after saving) once this invocation has run N steps; "
                                                "for interrupting and resuming on purpose")

    def __post_init__(self) -> None:
        for name in ("model", "meta_path", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if self.stage is not None and str(self.stage) not in STAGES:
            raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.stage is not None:
            self.stage = str(self.stage)
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_packed_tokens", "max_seq_length",
                     "log_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("use_llm_lora", "use_backbone_lora", "save_steps", "save_total_limit", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "warmup_ratio", "min_lr_ratio", "num_train_epochs", "max_grad_norm",
                     "lora_dropout", "lora_alpha", "drop_path_rate"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.num_train_epochs <= 0:
            raise ConfigError(f"--num-train-epochs must be > 0, got {self.num_train_epochs}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("lora_dropout", "drop_path_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"--lora-alpha must be > 0, got {self.lora_alpha}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.stage == "0" and (self.use_llm_lora or self.use_backbone_lora):
            raise ConfigError("--stage 0 (vision pre-training) trains full weights: drop --use-llm-lora / "
                              "--use-backbone-lora")
        if self.vico is not None:
            self._check_vico()
        if self.loss_reduction not in REDUCTIONS:
            raise ConfigError(f"--loss-reduction must be one of {', '.join(REDUCTIONS)}, got {self.loss_reduction!r}")
        if self.v2pe_stride is not None and not 0 < self.v2pe_stride <= 1:
            raise ConfigError(f"--v2pe-stride must be in (0, 1], got {self.v2pe_stride}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"--parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "mpo" and self.stage == "0":
            raise ConfigError("--stage 0 (vision pre-training on regions) is not a preference method: drop "
                              "--method mpo or pick another --stage")
        if self.method == "mpo":
            from .mpo_loss import MPOLossConfig
            MPOLossConfig.parse(self.loss_type, self.loss_weights, self.beta, self.rpo_alpha)  # fail before loading

    def _check_vico(self) -> None:
        if self.vico not in VICO_STAGES:
            raise ConfigError(f"--vico must be one of {', '.join(VICO_STAGES)}, got {self.vico!r}")
        if self.stage == "0" or self.use_llm_lora or self.use_backbone_lora:
            raise ConfigError("--vico trains full weights of a stage-2 model: drop --stage 0 and LoRA")
        if self.method != "sft":
            raise ConfigError(f"--vico is its own objective on SFT data: drop --method {self.method}")
        if self.v2pe_stride is not None:
            raise ConfigError("--vico keeps positions dense after compression (as Flash inference does): drop "
                              "--v2pe-stride")
        if self.vico == "router" and self.unfreeze_vit_layers:
            raise ConfigError("--vico router trains only the router: drop --unfreeze-vit-layers")
        if self.vico == "router" and self.packed:
            raise ConfigError("--vico router needs one sample per row: drop --packed")
        if self.vico == "router" and not self.vico_reference:
            raise ConfigError("--vico router needs --vico-reference: the model the consistency stage started from "
                              "(the policy itself would give a zero loss to divide by)")
        for name in ("vico_compress_prob", "vico_mixed_prob", "flash_relative_threshold", "flash_absolute_threshold"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if not (math.isfinite(self.router_percentile) and 0 < self.router_percentile < 100):
            raise ConfigError(f"--router-percentile must be in (0, 100), got {self.router_percentile}")
        if self.router_window < 1:
            raise ConfigError(f"--router-window must be >= 1, got {self.router_window}")


def add_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One flag per dataclass field: `--field-name`, help from the field's metadata."""
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        names = [f"--{f.name.replace('_', '-')}", *meta.pop("aliases", ())]
        kw: dict[str, Any] = {"help": meta.pop("help"), "dest": f.name, **meta}
        if f.type in ("bool", bool):
            kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
            kw.pop("required", None)
        else:
            kw["type"] = _scalar_type(str(f.type))
            if "choices" not in kw:
                kw.setdefault("metavar", {int: "N", float: "X"}.get(kw["type"], "NAME" if "nargs" in kw else None))
        kw.setdefault("default", f.default)
        parser.add_argument(*names, **kw)


def _scalar_type(annotation: str) -> type:
    for name, t in (("int", int), ("float", float)):
        if annotation.startswith(name):
            return t
    return str


def from_namespace(ns: argparse.Namespace, cls: type = TrainConfig) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


@dataclass
class MergeConfig:
    adapter: str = _opt(None, "the adapter/ directory of a LoRA training checkpoint", required=True, metavar="DIR")
    output: str = _opt(None, "directory for the merged checkpoint (official layout)", required=True, metavar="DIR")
    model: str | None = _opt(None, "base model (default: the one the adapter was trained from)",
                             metavar="DIR|REPO|PRESET")
    tokenizer: str | None = _opt(None, "tokenizer to save beside the weights (default: the base model's, or the "
                                       "adapter's checkpoint)", metavar="DIR")
    overwrite: bool = _opt(False, "write into an existing non-empty --output directory (replacing only the "
                                  "checkpoint's own files)")
