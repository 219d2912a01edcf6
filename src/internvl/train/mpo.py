"""MPO on the SFT trainer: the objective (`MPOObjective`), the frozen reference model, precomputed reference
log-probs. Spec: docs section 1 (`internvl_chat_mpo.py`, `trainer_dpo.py`).

`internvl train --method mpo` runs the same loop as SFT (`trainer.train_step`); only the data
(`mpo_data.PreferenceDataset`) and the objective differ. Per micro-batch the objective runs the policy once
over the chosen and rejected sequences together, gets the reference log-probs (a frozen copy of the starting
checkpoint, or `--ref-model`, run without gradients on the same device; or a table computed once up front with
`--precompute-ref`, after which the reference model is freed), and returns the micro-batch's MPO loss
(`mpo_loss.mpo_loss`) divided by the number of micro-batches in the global batch: a step's loss is the mean of
its micro-batch losses over accumulation and processes, as the official (HF Trainer + DeepSpeed) run averages.
bco_pair's running shift delta lives here and is saved in every checkpoint (`state_dict`), so `--resume`
continues it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from . import distributed as D
from .mpo_data import PreferenceBatch, PreferenceDataset
from .mpo_loss import MPOLossConfig, RunningMean, mpo_loss, sequence_logps

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference_logps.pt"
STAT_NAMES = ("pairs", "micro_batches", "sft_sum", "rewards_chosen", "rewards_rejected", "accuracies", "margins",
              "logps_chosen", "logps_rejected")


class MPOObjective:
    """Mixed preference optimisation over `PreferenceBatch`es; see the module docstring.

    Args:
        cfg: Loss types, weights, beta, rpo_alpha.
        info: The process group (delta averages over ranks; stats are summed by the trainer).
        reference: The frozen reference model (eval mode, no gradients), or None with `reference_table`.
        reference_table: (N, 2) float32 reference log-prob sums (chosen, rejected) per dataset index.
    """

    def __init__(self, cfg: MPOLossConfig, info: D.DistInfo, reference: nn.Module | None = None,
                 reference_table: torch.Tensor | None = None) -> None:
        if (reference is None) == (reference_table is None):
            raise ValueError("give exactly one of reference and reference_table")
        self.cfg, self.info, self.reference, self.reference_table = cfg, info, reference, reference_table
        self.running = RunningMean()
        self._stats: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- the Objective protocol
    def weight(self, batch: PreferenceBatch) -> torch.Tensor:
        """Each micro-batch that holds pairs counts once (its loss is already a mean over its pairs)."""
        return torch.tensor(float(batch.num_pairs > 0))

    def __call__(self, model: nn.Module, batch: PreferenceBatch, weight_total: torch.Tensor) -> torch.Tensor:
        device = weight_total.device
        p = batch.num_pairs
        logps, counts, logits = self._forward(model, batch, device)
        if self.reference_table is not None:
            table = self.reference_table[batch.indices]
            ref = torch.cat([table[:, 0], table[:, 1]]).to(device)
        else:
            with torch.no_grad():
                ref = self._forward(self.reference, batch, device)[0]
        if p == 0:
            # every rank still ran its forwards (collectives) and now joins delta's reduction
            if "bco_pair" in self.cfg.loss_types:
                self._update_delta(None)
            return logits.sum() * 0.0
        sft = None
        if self.cfg.uses_sft_term:
            sft = -logps[:p].sum() / counts[:p].sum().clamp(min=1)  # one token mean over all chosen responses
        if self.cfg.length_normalised:
            logps, ref = logps / counts.clamp(min=1), ref / counts.clamp(min=1)
        out = mpo_loss(logps[:p], logps[p:], ref[:p], ref[p:], self.cfg, sft, self._update_delta)
        self._accumulate(out, logps.detach(), p, device)
        return out.loss / weight_total

    def step_statistics(self) -> dict[str, torch.Tensor]:
        """This rank's sums since the last call: every name of `statistic_names`, in that order (ranks reduce
        them as one vector), float64 scalars on the device."""
        stats, self._stats = self._stats, {}
        zero = torch.zeros((), dtype=torch.float64, device=self.info.device)
        return {name: stats.get(name, zero) for name in self.statistic_names()}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The logged values of a step from its global sums: means over pairs, the SFT term's mean over
        micro-batches, and delta after the step."""
        pairs = max(sums.get("pairs", 0.0), 1.0)
        row = {f"loss_{t}": sums.get(f"loss_{t}", 0.0) / pairs for t in self.cfg.loss_types if t != "sft"}
        if self.cfg.uses_sft_term:
            row["loss_sft"] = sums.get("sft_sum", 0.0) / max(sums.get("micro_batches", 0.0), 1.0)
        for name in ("rewards_chosen", "rewards_rejected", "accuracies", "margins"):
            row[f"rewards/{name.removeprefix('rewards_')}"] = sums.get(name, 0.0) / pairs
        row["logps/chosen"] = sums.get("logps_chosen", 0.0) / pairs
        row["logps/rejected"] = sums.get("logps_rejected", 0.0) / pairs
        if "bco_pair" in self.cfg.loss_types:
            row["bco_delta"] = self.running.mean
        return row

    def state_dict(self) -> dict:
        return {"bco_delta": self.running.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "bco_delta" in state:
            self.running.load_state_dict(state["bco_delta"])

    # ---------------------------------------------------------------- helpers
    def _forward(self, model: nn.Module, pb: PreferenceBatch, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-prob sums, token counts) of the batch's sequences in input order, and the logits."""
        from .trainer import attention_layout
        b = pb.batch
        layout = attention_layout(b.seq_ids)  # from the CPU copy: no device sync
        bd = b.to(device)
        if layout is not None:
            layout = layout.to(device)
        pixel_values, tile_index = bd.pixel_values, None
        if pb.tile_index is not None:
            tile_index = pb.tile_index.to(device)
            if vision_is_random(model):  # the official way: every sequence's tiles through the ViT on their own
                pixel_values, tile_index = pixel_values[tile_index], None
        logits = model(bd.input_ids, bd.position_ids, layout, pixel_values, tile_index)
        logps, counts = sequence_logps(logits, bd.labels, bd.seq_ids, b.slots)
        return logps, counts, logits

    def _update_delta(self, mean_reward: torch.Tensor | None) -> float:
        """Add this micro-batch's mean reward (the mean over ranks of the rank means) to the running mean."""
        if not self.info.enabled:
            return self.running.update(float(mean_reward), 1.0)
        device = self.info.device
        x = torch.zeros(2, dtype=torch.float64, device=device)
        if mean_reward is not None:
            x[0], x[1] = mean_reward.double(), 1.0
        D.all_reduce_sum(x, self.info)
        total, n = x.tolist()
        return self.running.update(total, n)

    def _accumulate(self, out, logps: torch.Tensor, p: int, device: torch.device) -> None:
        c, r = out.chosen_rewards, out.rejected_rewards
        values = {"pairs": torch.tensor(float(p), device=device), "micro_batches": torch.tensor(1.0, device=device),
                  "rewards_chosen": c.sum(), "rewards_rejected": r.sum(), "accuracies": (c > r).float().sum(),
                  "margins": (c - r).sum(), "logps_chosen": logps[:p].sum(), "logps_rejected": logps[p:].sum()}
        if out.sft is not None:
            values["sft_sum"] = out.sft
        for t, losses in out.per_type.items():
            if t != "sft":
                values[f"loss_{t}"] = losses.sum()
        for k, v in values.items():
            v = v.detach().double()
            self._stats[k] = self._stats[k] + v if k in self._stats else v

    def statistic_names(self) -> list[str]:
        """Every name `step_statistics` can return, in a fixed order (ranks reduce them as one vector)."""
        return list(STAT_NAMES) + [f"loss_{t}" for t in self.cfg.loss_types if t != "sft"]


def vision_is_random(model: nn.Module) -> bool:
    """Whether the ViT's output depends on chance now: training mode with drop path or a dropout (LoRA's)."""
    vision = D.unwrap(model).vision_model
    if not vision.training:
        return False
    return any((getattr(m, "drop_path", 0.0) or 0.0) > 0 or (isinstance(m, nn.Dropout) and m.p > 0)
               for m in vision.modules() if m.training)


# ---------------------------------------------------------------- the reference model

def load_reference(source: str, tokenizer: str | None, seed: int, cls: type, device: torch.device) -> nn.Module:
    """The frozen reference: `source` (the starting checkpoint, or a preset rebuilt from the same seed) in
    eval mode, without gradients, on `device`."""
    from .state import load_start_model
    model, tok, _ = load_start_model(source, tokenizer, seed, cls=cls)
    model.requires_grad_(False)
    return model.eval().to(device)


def precompute_reference(reference: nn.Module, dataset: PreferenceDataset, collate, info: D.DistInfo,
                         batch_size: int, bf16: bool, num_workers: int = 0) -> torch.Tensor:
    """(len(dataset), 2) float32 reference log-prob sums (chosen, rejected) of every pair, NaN for skipped lines.

    Each rank computes a contiguous share, in micro-batches of `batch_size`; every rank runs the same number
    of forwards (an empty batch where its share has run out), since a sharded reference's forward is collective.
    """
    n = len(dataset)
    share = -(-n // info.world_size)
    mine = list(range(info.rank * share, min(n, (info.rank + 1) * share)))
    batches = -(-share // batch_size)
    chunks = [mine[i * batch_size:(i + 1) * batch_size] for i in range(batches)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, collate_fn=collate, num_workers=num_workers)
    table = torch.zeros(n, 2, dtype=torch.float64, device=info.device)
    found = torch.zeros(n, dtype=torch.float64, device=info.device)
    objective = MPOObjective(MPOLossConfig(), info, reference=reference)
    device = info.device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            logps = objective._forward(reference, batch, device)[0]
            p = batch.num_pairs
            if p:
                idx = batch.indices.to(device)
                table[idx, 0], table[idx, 1] = logps[:p].double(), logps[p:].double()
                found[idx] = 1.0
    D.all_reduce_sum(table, info)
    D.all_reduce_sum(found, info)
    table[found == 0] = float("nan")
    return table.float().cpu()


def reference_fingerprint(cfg, num_pairs: int) -> dict:
    """What the precomputed table depends on; a resumed run reuses the saved table only when all agree."""
    meta = Path(cfg.meta_path)
    digest = hashlib.sha256(meta.read_bytes()).hexdigest() if meta.is_file() else None
    return {"reference": str(Path(cfg.ref_model or cfg.model).resolve()) if Path(cfg.ref_model or cfg.model).exists()
            else (cfg.ref_model or cfg.model), "meta_sha256": digest, "num_pairs": num_pairs,
            "max_seq_length": cfg.max_seq_length, "max_dynamic_patch": cfg.max_dynamic_patch, "bf16": cfg.bf16,
            "seed": cfg.seed}


def load_saved_table(output_dir: str, fingerprint: dict) -> torch.Tensor | None:
    path = Path(output_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if json.loads(saved["fingerprint"]) != fingerprint:
        log.info("%s was computed for other settings; recomputing", path)
        return None
    return saved["logps"]


def save_table(output_dir: str, table: torch.Tensor, fingerprint: dict) -> None:
    path = Path(output_dir) / REFERENCE_FILE
    tmp = path.with_name(f".{REFERENCE_FILE}.tmp")
    torch.save({"logps": table, "fingerprint": json.dumps(fingerprint)}, tmp)
    os.replace(tmp, path)


def build_objective(cfg, info: D.DistInfo, model_cls: type, dataset: PreferenceDataset, collate,
                    run_vision_always: bool) -> MPOObjective:
    """The MPO objective of a run: the loss settings, and the reference (a model, or its precomputed table)."""
    loss_cfg = MPOLossConfig.parse(cfg.loss_type, cfg.loss_weights, cfg.beta, cfg.rpo_alpha)
    table = None
    if cfg.precompute_ref:
        fingerprint = reference_fingerprint(cfg, len(dataset))
        table = load_saved_table(cfg.output_dir, fingerprint) if cfg.resume else None
        table = D.broadcast_object(table, info)
        if table is not None:
            log.info("reusing the reference log-probs in %s", Path(cfg.output_dir) / REFERENCE_FILE)
            return MPOObjective(loss_cfg, info, reference_table=table)
    reference = load_reference(cfg.ref_model or cfg.model, cfg.tokenizer, cfg.seed, model_cls, info.device)
    reference.run_vision_always = run_vision_always
    if info.enabled and cfg.parallel == "fsdp":
        reference = D.wrap_model(reference, info, "fsdp", [reference.vision_model.encoder.layers,
                                                          reference.language_model.layers])
    if not cfg.precompute_ref:
        return MPOObjective(loss_cfg, info, reference=reference)
    log.info("computing the reference log-probs of %d pairs", len(dataset))
    table = precompute_reference(reference, dataset, collate, info, cfg.per_device_batch_size, cfg.bf16,
                                 cfg.num_workers)
    del reference
    if info.is_main:
        save_table(cfg.output_dir, table, reference_fingerprint(cfg, len(dataset)))
    return MPOObjective(loss_cfg, info, reference_table=table)

