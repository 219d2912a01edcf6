"""The training loop, visible in one place: set up, then `train_step` over micro-batches until `max_steps`.

Spec section 5. `train(cfg)` builds the model (a checkpoint or a preset), freezes parts and adds LoRA
(`optim.py`, `lora.py`), wraps it for several processes (`distributed.py`), streams packed or padded batches
from the official data format (`data.py`, `packing.py`), and saves atomic, chat-loadable checkpoints with
everything `--resume` needs (`state.py`). An objective turns a micro-batch into its share of the step's loss;
SFT is the one here; MPO (`--method mpo`, `mpo.py`) plugs into the same `train_step` with its own data.

The step's loss is sum(w * CE) / sum(w) over the whole global batch (every micro-batch of every rank,
`loss.sft_loss`), so gradient accumulation and the number of processes change nothing but float rounding.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.utils.checkpoint  # noqa: F401  (the decoder and ViT call torch.utils.checkpoint.checkpoint)
from torch import nn

from ..checkpoint.loader import OFFICIAL, load_model, load_weights
from ..errors import ConfigError
from ..models.internvl import InternVL
from ..models.flash import choose
from ..models.layers import Segments
from ..processing.tokenizer import Tokenizer
from . import distributed as D
from .args import TrainConfig
from .data import DataConfig, SFTDataset
from .lora import apply_lora, load_trained_tensors, lora_specs, merged_state_dict, read_adapter
from .loss import sft_loss
from .metrics import MetricsLog, draw_from_metrics
from .objective import Objective, StatelessObjective
from .optim import (Freezing, apply_freezing, build_optimizer, cosine_schedule, set_frozen_parts_eval,
                    trainable_summary, unfreeze_last_vit_layers)
from .packing import Batch, PackedCollator
from .region_align import RegionCollator, RegionDataset, RegionTextObjective, phrase_embeddings, unfreeze_text_encoder
from .state import (ADAPTER, capture_rng, clean_staging, find_latest, load_start_model, read_trainer_state,
                    restore_rng, save_training_checkpoint)
from .vico import ConsistencyObjective, RouterObjective, add_flash_modules, freeze_for

log = logging.getLogger(__name__)


class SFTInternVL(InternVL):
    """`InternVL` whose `forward` is the training forward, so FSDP2 and DDP (which hook `forward`) see the whole
    computation, the tied LM head included, as one call."""

    run_vision_always = False  # set under several processes, see forward

    def forward(self, input_ids: torch.Tensor | None, position_ids: torch.Tensor | None,
                mask: torch.Tensor | Segments | None, pixel_values: torch.Tensor | None = None,
                tile_index: torch.Tensor | None = None,
                phrases: tuple[torch.Tensor, torch.Tensor] | None = None, compress: torch.Tensor | None = None,
                router: bool = False) -> torch.Tensor | tuple:
        """(B, T) ids and positions, attention layout (`attention_layout`) [+ tiles] -> logits (B, T, vocab).

        `tile_index` (MPO): the tiles are encoded once and their features placed in this order, so a tile that
        several sequences show goes through the ViT once. Stage 0 passes `phrases` (ids, mask) and no text:
        -> (image tokens, phrase embeddings), no decoder. ViCO (Flash): `compress` (tiles,) bool gives those
        tiles the compressed branch's tokens (the prompt has their slots dropped already); `router=True` with
        tiles only -> the router's logits (tiles, 2)."""
        if phrases is not None:
            return self.extract_feature(pixel_values), phrase_embeddings(self.language_model.embed_tokens, *phrases)
        if router:
            with torch.no_grad():  # the router reads the frozen ViT's last layer
                vit = self.vision_model(pixel_values.to(self.mlp1[1].weight.dtype))[:, 1:]
            return self.gating(self.pooling_before_gating(vit))
        if compress is not None:
            tiles = self.encode_tiles(pixel_values, "both")
            embeds = self.embed(input_ids, image_features=choose(tiles.full, tiles.small, compress.tolist()))
        else:
            features = None
            if tile_index is not None and pixel_values is not None:
                features = self.extract_feature(pixel_values)[tile_index]
            embeds = self.embed(input_ids, pixel_values=pixel_values if features is None else None,
                                image_features=features)
        if pixel_values is None and self.run_vision_always:
            # every rank must run the ViT each micro-batch (its FSDP all-gathers and DDP gradient reductions are
            # collective), so a text-only batch runs one blank tile at zero weight, like the official trainer
            s = self.config.image_size
            embeds = embeds + 0.0 * self.extract_feature(embeds.new_zeros(1, 3, s, s)).sum()
        hidden = self.language_model(embeds, position_ids, mask)
        return self.language_model.logits(hidden)


def attention_layout(seq_ids: torch.Tensor) -> Segments | None:
    """How a (CPU) batch's rows attend. One sample per row: plain causal attention, no mask (padding only
    trails, so no real token can see it). Packed rows: `Segments`, attention per sample (a dense
    block-diagonal mask, `packing.attention_mask_from_seq_ids`, gives the same result at T^2 cost per row)."""
    return None if int(seq_ids.max()) <= 0 else Segments(seq_ids)


class SFTObjective(StatelessObjective):
    """Weighted next-token cross-entropy (`loss.sft_loss`), normalised over the global batch."""

    def weight(self, batch: Batch) -> torch.Tensor:
        return batch.loss_weight[:, 1:].sum()  # the weights of the shifted targets

    def __call__(self, model: nn.Module, batch: Batch, weight_total: torch.Tensor) -> torch.Tensor:
        layout = attention_layout(batch.seq_ids)  # built from the CPU copy: no device sync
        b = batch.to(weight_total.device)
        if layout is not None:
            layout = layout.to(b.input_ids.device)
        logits = model(b.input_ids, b.position_ids, layout, b.pixel_values)
        return sft_loss(logits, b.labels, b.loss_weight, weight_total)


@dataclass
class StepContext:
    info: D.DistInfo
    params: list[torch.Tensor]  # the trainable parameters (clipped together)
    max_grad_norm: float
    bf16: bool
    objective: Objective = field(default_factory=SFTObjective)


def train_step(model: nn.Module, micro_batches: list[Batch], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, ctx: StepContext) -> dict:
    """One optimizer step over this rank's micro-batches of the global batch.

    Returns, without any device sync: the global-batch loss, the gradient norm before clipping (tensors), the
    lr this step used (a float), global token / sample / skipped-sample counts (tensors), and the objective's
    step statistics summed over ranks (`objective`: name -> tensor).
    """
    device = ctx.info.device
    # the normaliser covers every micro-batch of every rank; weights live on the CPU, one small reduction
    weight = torch.stack([ctx.objective.weight(b) for b in micro_batches]).sum().to(device)
    weight_total = D.all_reduce_sum(weight, ctx.info)
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        with D.gradient_sync(model, sync=i == len(micro_batches) - 1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.bf16):
                loss = ctx.objective(model, batch, weight_total)
            # DDP and FSDP average gradients over ranks; scaling by the world size turns that into the sum
            (loss * ctx.info.world_size).backward()
        loss_sum += loss.detach()
    if ctx.max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(ctx.params, ctx.max_grad_norm, foreach=True)
    else:
        grad_norm = torch.zeros(())
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    counts = torch.tensor([sum(b.num_tokens for b in micro_batches), sum(b.num_samples for b in micro_batches),
                           sum(b.num_skipped for b in micro_batches)], dtype=torch.float64)
    extra = ctx.objective.step_statistics()
    parts = [loss_sum.double().reshape(1), counts.to(device)] + [v.double().reshape(1).to(device) for v in extra.values()]
    totals = D.all_reduce_sum(torch.cat(parts), ctx.info)
    return {"loss": totals[0], "grad_norm": grad_norm, "lr": lr, "tokens": totals[1], "samples": totals[2],
            "skipped": totals[3], "objective": dict(zip(extra, totals[4:]))}


# ---------------------------------------------------------------- setting up a run

@dataclass
class Run:
    cfg: TrainConfig
    info: D.DistInfo
    model: nn.Module  # wrapped for several processes (or the model itself)
    inner: SFTInternVL
    tokenizer: Tokenizer
    tokenizer_source: Path | None
    specs: dict  # LoRA specs by part ({} without LoRA)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: torch.utils.data.DataLoader
    sampler: D.StepBatchSampler
    start_step: int
    max_steps: int
    resumed_from: Path | None
    objective: Objective = field(default_factory=SFTObjective)


def prepare_model(cfg: TrainConfig, resume_from: Path | None) -> tuple[SFTInternVL, Tokenizer, Path | None, dict]:
    """Starting weights (or the checkpoint's), freezing, LoRA, drop path and gradient checkpointing."""
    torch.manual_seed(cfg.seed)  # identical initialisation (LoRA included) on every rank
    model, tokenizer, source = load_start_model(cfg.model, cfg.tokenizer, cfg.seed, cls=SFTInternVL)
    specs = lora_specs(cfg.use_llm_lora, cfg.use_backbone_lora, cfg.lora_alpha, cfg.lora_dropout,
                       cfg.lora_target_modules, cfg.backbone_lora_target_modules)
    if cfg.vico is not None:
        relative = cfg.flash_relative_threshold
        absolute = cfg.flash_absolute_threshold
        if cfg.vico == "router" and not model.config.has_vir:
            raise ConfigError(f"--vico router trains the router of a Flash model: {cfg.model} has no mlp2; run "
                              "--vico consistency on it first")
        if not model.config.has_vir:  # a plain InternVL becomes a Flash one: fresh mlp2 and router
            add_flash_modules(model, 0.0 if relative is None else relative, 0.5 if absolute is None else absolute)
        elif relative is not None or absolute is not None:
            model.config = model.config.replace(
                flash_mode=True, flash_relative_threshold=relative if relative is not None else
                model.config.flash_relative_threshold, flash_absolute_threshold=absolute if absolute is not None
                else model.config.flash_absolute_threshold)
    if resume_from is not None and not specs:
        load_weights(model, resume_from, OFFICIAL)  # full weights, exactly as saved (fp32)
    apply_freezing(model, Freezing.resolve(cfg.stage, cfg.freeze_backbone, cfg.freeze_mlp, cfg.freeze_llm))
    if cfg.vico is not None:
        freeze_for(model, cfg.vico)
    if cfg.stage == "0":
        unfreeze_text_encoder(model)
    apply_lora(model, specs)
    unfreeze_last_vit_layers(model, cfg.unfreeze_vit_layers)
    if resume_from is not None and specs:
        # LoRA: frozen base weights come from --model; everything that trained comes from the adapter
        load_trained_tensors(model, read_adapter(resume_from / ADAPTER)[2])
    if cfg.drop_path_rate is not None:
        layers = model.vision_model.encoder.layers
        for i, layer in enumerate(layers):
            layer.drop_path = cfg.drop_path_rate * i / max(len(layers) - 1, 1)
        vision = dataclasses.replace(model.config.vision, drop_path_rate=cfg.drop_path_rate)
        model.config = model.config.replace(vision=vision)
    if cfg.v2pe_stride is not None:  # trained with V2PE: the checkpoints' config says so, and chat follows it
        model.config = model.config.replace(v2pe_stride=cfg.v2pe_stride)
    model.language_model.gradient_checkpointing = cfg.grad_checkpoint
    model.vision_model.gradient_checkpointing = cfg.grad_checkpoint
    # tokenizer files are copied unchanged from their directory into every checkpoint (re-saved for 'byte')
    tokenizer_dir = source if cfg.tokenizer is None else Path(cfg.tokenizer) if Path(cfg.tokenizer).is_dir() else None
    return model, tokenizer, tokenizer_dir, specs


def build_loader(cfg: TrainConfig, model: InternVL, tokenizer: Tokenizer, info: D.DistInfo, start_step: int
                 ) -> tuple[torch.utils.data.DataLoader, D.StepBatchSampler, int]:
    """The data pipeline -> (loader, sampler, max_steps): SFT conversations, or MPO preference pairs."""
    overrides = {"max_seq_length": cfg.max_seq_length, "skip_bad_samples": cfg.skip_bad_samples}
    if cfg.max_dynamic_patch is not None:
        overrides["max_dynamic_patch"] = cfg.max_dynamic_patch
    data_cfg = DataConfig.from_model(model.config, **overrides)
    max_packed = cfg.max_packed_tokens if cfg.packed else None
    if cfg.stage == "0":
        dataset = RegionDataset(cfg.meta_path, tokenizer, data_cfg, cfg.seed, model.config.ps_version)
        collate = RegionCollator(tokenizer)
    elif cfg.method == "mpo":
        from .mpo_data import PreferenceCollator, PreferenceDataset
        dataset = PreferenceDataset(cfg.meta_path, tokenizer, data_cfg, seed=cfg.seed)
        collate = PreferenceCollator(tokenizer.pad_token_id, max_packed)
    else:
        dataset = SFTDataset(cfg.meta_path, tokenizer, data_cfg, seed=cfg.seed)
        collate = PackedCollator(tokenizer.pad_token_id, cfg.loss_reduction, max_packed)
    probe = D.StepBatchSampler(len(dataset), cfg.per_device_batch_size, cfg.gradient_accumulation_steps, info,
                               cfg.seed)
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * probe.steps_per_epoch))
    sampler = D.StepBatchSampler(len(dataset), cfg.per_device_batch_size, cfg.gradient_accumulation_steps, info,
                                 cfg.seed, start_step=start_step, max_steps=max_steps)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
        pin_memory=info.device.type == "cuda", persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed))  # a private generator: the global RNG stays untouched
    return loader, sampler, max_steps


def setup(cfg: TrainConfig, info: D.DistInfo) -> Run:
    out = Path(cfg.output_dir)
    if cfg.resume and find_latest(out) is None:  # a silent fresh start would look like a resumed run
        raise ConfigError(f"--resume: {out} holds no complete checkpoint to resume from; run without --resume "
                          "to start from step 0")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        clean_staging(out)
    D.barrier(info)
    resume_from = find_latest(out) if cfg.resume else None
    if not cfg.resume and find_latest(out) is not None:
        raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue, or choose another "
                          "--output-dir")
    saved = read_trainer_state(resume_from) if resume_from is not None else None
    if saved and saved[0].get("config", {}).get("method", "sft") != cfg.method:
        raise ConfigError(f"{resume_from} was trained with --method {saved[0]['config'].get('method', 'sft')}, this "
                          f"run asks for --method {cfg.method}")
    if saved and saved[0].get("config", {}).get("vico") != cfg.vico:
        was, now = saved[0]["config"].get("vico"), cfg.vico
        raise ConfigError(f"{resume_from} was trained with " + (f"--vico {was}" if was else "no --vico") +
                          ", this run asks for " + (f"--vico {now}" if now else "no --vico"))
    model, tokenizer, tokenizer_source, specs = prepare_model(cfg, resume_from)
    model.run_vision_always = info.enabled
    model.to(info.device)
    start_step = saved[0]["step"] if saved else 0
    loader, sampler, max_steps = build_loader(cfg, model, tokenizer, info, start_step)
    if start_step > max_steps:  # resuming would train nothing and save nothing at --max-steps
        raise ConfigError(f"{resume_from} is at step {start_step}, past this run's {max_steps} steps: it is another "
                          "run's (a longer schedule); choose another --output-dir")
    if saved and saved[0]["global_batch"] != sampler.global_batch:
        raise ConfigError(f"{resume_from} was trained with a global batch of {saved[0]['global_batch']}, this run "
                          f"has {sampler.global_batch}: the data position would not match")
    wrapped = D.wrap_model(model, info, cfg.parallel, [model.vision_model.encoder.layers, model.language_model.layers],
                           find_unused=model.config.select_layer != -1)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, max_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    objective: Objective = RegionTextObjective() if cfg.stage == "0" else SFTObjective()
    if cfg.vico is not None:
        objective = vico_objective(cfg, info, model)
    if cfg.method == "mpo":  # before the RNG is seeded or restored below: building the reference draws from it
        from .mpo import build_objective
        objective = build_objective(cfg, info, SFTInternVL, loader.dataset, loader.collate_fn,
                                    model.run_vision_always)
    if saved:
        objective.load_state_dict(saved[0].get("objective", {}))
        D.load_optimizer_state(wrapped, optimizer, saved[1], info)
        scheduler.load_state_dict(saved[2]["scheduler"])
        rngs = saved[2]["rng"]
        restore_rng(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    else:
        torch.manual_seed(cfg.seed + info.rank)  # dropout / drop path streams differ per rank
    return Run(cfg, info, wrapped, model, tokenizer, tokenizer_source, specs, optimizer, scheduler, loader,
               sampler, start_step, max_steps, resume_from, objective)


# ---------------------------------------------------------------- saving

def save(run: Run, step: int) -> Path | None:
    """Gather the full state to rank 0 and write `checkpoint-STEP` (every rank must call this)."""
    info, cfg = run.info, run.cfg
    state = D.full_model_state(run.model, info)
    optim_state = D.full_optimizer_state(run.model, run.optimizer, info)
    rngs = D.all_gather_objects(capture_rng(), info)
    path = None
    if info.is_main:
        adapter = None
        if run.specs:
            trained = {n for n, p in run.inner.named_parameters() if p.requires_grad}
            base = Path(cfg.model).resolve() if Path(cfg.model).is_dir() else cfg.model
            adapter = dict(tensors={k: v for k, v in state.items() if k in trained}, specs=run.specs,
                           base_model=str(base), seed=cfg.seed)
            state = merged_state_dict(state, run.specs)
        epoch, offset = run.sampler.position(step)
        trainer_state = {"epoch": epoch, "epoch_offset": offset, "global_batch": run.sampler.global_batch,
                         "num_samples": run.sampler.n, "world_size": info.world_size, "max_steps": run.max_steps,
                         "config": dataclasses.asdict(cfg), "objective": run.objective.state_dict()}
        path = save_training_checkpoint(
            cfg.output_dir, step, model_state=state, config=run.inner.config, tokenizer=run.tokenizer,
            tokenizer_source=run.tokenizer_source, optimizer_state=optim_state,
            scheduler_state=run.scheduler.state_dict(), rng_states=rngs, trainer_state=trainer_state,
            adapter=adapter, keep=cfg.save_total_limit)
        log.info("saved %s", path)
    D.barrier(info)
    return path


# ---------------------------------------------------------------- the loop

def _progress(run: Run):
    if not (run.info.is_main and run.cfg.progress):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=run.max_steps, initial=run.start_step, desc="train", dynamic_ncols=True)


def fit(run: Run) -> dict:
    """Run steps from `run.start_step` to `run.max_steps` (or `max_steps_this_run` of them); save and log."""
    cfg, info = run.cfg, run.info
    metrics = MetricsLog(cfg.output_dir, resume_step=run.start_step if run.resumed_from else None) \
        if info.is_main else None
    ctx = StepContext(info, [p for p in run.inner.parameters() if p.requires_grad], cfg.max_grad_norm, cfg.bf16,
                      run.objective)
    bar, batches = _progress(run), iter(run.loader)
    run.model.train()
    set_frozen_parts_eval(run.inner)
    stop = run.max_steps
    if cfg.max_steps_this_run is not None:
        stop = min(stop, run.start_step + cfg.max_steps_this_run)
    losses, last_saved, t_log, tokens = [], None, time.perf_counter(), 0
    for step in range(run.start_step + 1, stop + 1):
        stats = train_step(run.model, [next(batches) for _ in range(cfg.gradient_accumulation_steps)],
                           run.optimizer, run.scheduler, ctx)
        tokens = tokens + stats["tokens"]  # stays on the device until the next log line
        if step % cfg.log_steps == 0 or step == stop:
            now = time.perf_counter()
            row = _row(step, stats, float(tokens) / max(now - t_log, 1e-9), run)
            t_log, tokens = now, 0
            losses.append(row["loss"])
            if metrics is not None:
                metrics.log(row)
            if bar is not None:
                extra = {"acc": f"{row['rewards/accuracies']:.2f}"} if "rewards/accuracies" in row else {}
                bar.set_postfix(loss=f"{row['loss']:.4f}", **extra, lr=f"{row['lr']:.2e}",
                                tok_s=f"{row['tokens_per_s']:.0f}")
        if bar is not None:
            bar.update(1)
        if (cfg.save_steps and step % cfg.save_steps == 0) or step == stop:
            last_saved = save(run, step)
            t_log = time.perf_counter()  # saving time is not training throughput
    if bar is not None:
        bar.close()
    if metrics is not None:
        metrics.close()
        draw_from_metrics(cfg.output_dir)
    return {"losses": losses, "start_step": run.start_step, "end_step": stop, "max_steps": run.max_steps,
            "checkpoint": last_saved, "trainable": trainable_summary(run.inner)}


def vico_objective(cfg: TrainConfig, info: D.DistInfo, model: SFTInternVL) -> Objective:
    """`--vico consistency|router`: the objective, with its frozen reference loaded."""
    # the frozen reference: the starting checkpoint (or --vico-reference) reading every tile in full
    from ..presets import PRESETS
    if cfg.vico_reference is None and cfg.model in PRESETS:
        raise ConfigError(f"--vico starts from a trained model: --model {cfg.model} is a preset (random weights); "
                          "give a checkpoint, or --vico-reference")
    reference, _, _ = load_model(cfg.vico_reference or cfg.model, dtype=torch.float32, device=info.device,
                                 cls=SFTInternVL)
    reference.img_context_token_id = model.img_context_token_id
    reference.requires_grad_(False)
    ids, per_tile = model.img_context_token_id, model.num_image_token
    if reference.num_image_token != per_tile:
        raise ConfigError(f"the ViCO reference has {reference.num_image_token} tokens per tile, the model "
                          f"{per_tile}: they must share the vision geometry")
    if cfg.vico == "consistency":
        return ConsistencyObjective(reference, ids, per_tile, cfg.vico_compress_prob, cfg.vico_mixed_prob)
    return RouterObjective(reference, ids, per_tile, cfg.router_percentile, cfg.router_window)


def _row(step: int, stats: dict, tokens_per_s: float, run: Run) -> dict:
    """One metrics row (the only place step statistics are read back from the device)."""
    norm = stats["grad_norm"]
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2 returns a DTensor
    epoch, _ = run.sampler.position(step - 1)
    extra = run.objective.metrics({k: float(v) for k, v in stats.get("objective", {}).items()})
    return {"step": step, "loss": float(stats["loss"]), **extra, "lr": float(stats["lr"]), "grad_norm": float(norm),
            "tokens": int(stats["tokens"]), "samples": int(stats["samples"]), "skipped": int(stats["skipped"]),
            "tokens_per_s": tokens_per_s, "epoch": epoch}


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run described by `cfg`; returns this invocation's logged losses and more."""
    info = D.init_distributed(cfg.device)
    D.rank0_logging(info)
    try:
        if cfg.vico is not None and info.world_size > 1:
            raise ConfigError("--vico runs in one process only (not under torchrun)")
        run = setup(cfg, info)
        summary = run_summary(run)
        log.info("training %s trainable of %s parameters (vision %s, projector %s, llm %s) for %d steps%s",
                 *summary, run.max_steps, f", resuming at step {run.start_step}" if run.resumed_from else "")
        return fit(run)
    finally:
        D.shutdown(info)


def run_summary(run: Run) -> tuple:
    t = trainable_summary(run.inner)
    return (f"{t['trainable']:,}", f"{t['total']:,}", f"{t['vision_model']:,}", f"{t['mlp1']:,}",
            f"{t['language_model']:,}")

