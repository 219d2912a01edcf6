"""ViCO, the two training stages of InternVL3.5-Flash (paper section 2.3; internvl35.md 1.4), as objectives of
`internvl train --vico consistency|router`.

Consistency: the model learns to answer from compressed tiles as it answers from full ones. Each sample draws
its compression rate (1/4 or 1/16 of the ViT tokens, i.e. the full or the 64-token branch; all tiles of a
sample share it, as in the paper; `--vico-mixed-prob` lets a share of the samples draw per tile instead, the
mixes the router makes at inference, which a model trained on uniform rates may never have read); the loss
is KL(reference || policy) per supervised token, where the reference is the frozen starting model reading
every tile in full. A compressed sample's prompt drops the unused `<IMG_CONTEXT>` slots and keeps dense
positions, exactly as inference does.

Router: only `pooling_before_gating` and `gating` train, as a two-way classifier. Each tile's label comes
from r = L(y | that tile compressed) / L(y | nothing compressed), L the same per-sample mean KL to the frozen
reference, computed by the (frozen) policy: 0 ("compress") when r is below the k-th percentile of the r
values in a sliding window of recent tiles, 1 ("keep") otherwise; the cross-entropy weighs the two classes
by the window's balance, so both count equally.

No public ViCO code exists; where the paper is silent: each tile's r compresses that tile alone (the other
tiles of its image stay full); the window and percentile are flags (`--router-window`, `--router-percentile`);
the window is saved in every checkpoint, so a resumed run labels as the uninterrupted one would. Both stages run
in one process only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.flash import CrossAttentionPooling, Gating, build_mlp2, choose, keep_mask
from .objective import StatelessObjective
from .packing import Batch
from .records import IGNORE_INDEX

ROUTER_PARTS = ("pooling_before_gating", "gating")


def add_flash_modules(model: nn.Module, relative: float, absolute: float) -> None:
    """Turn an InternVL into an InternVL3.5-Flash: fresh `mlp2`, `pooling_before_gating` and `gating` (the
    training init scheme, from the global RNG) and a config with flash_mode and these thresholds."""
    cfg = model.config.replace(flash_mode=True, flash_relative_threshold=relative, flash_absolute_threshold=absolute)
    device = next(model.parameters()).device
    v = cfg.vision.hidden_size
    model.mlp2 = build_mlp2(v, cfg.llm.hidden_size, cfg.downsample_ratio).to(device)
    model.pooling_before_gating = CrossAttentionPooling(v).to(device)
    model.gating = Gating(v).to(device)
    model.config = cfg
    model.init_weights(only=("mlp2.", *(p + "." for p in ROUTER_PARTS)))


def freeze_for(model: nn.Module, stage: str) -> None:
    """Consistency: the router has nothing to learn (no routing happens), so it is frozen. Router: only the
    router trains."""
    router = [getattr(model, p) for p in ROUTER_PARTS]
    if stage == "router":
        for p in model.parameters():
            p.requires_grad_(False)
    for module in router:
        module.requires_grad_(stage == "router")


# ---------------------------------------------------------------- compressing a batch

def tiles_per_row(input_ids: torch.Tensor, image_token_id: int, per_tile: int) -> list[int]:
    return [int(n) // per_tile for n in (input_ids == image_token_id).sum(1).tolist()]


def draw_rates(batch: Batch, prob: float, image_token_id: int, per_tile: int, mixed: float = 0.0) -> list[bool]:
    """Compression flags from the global RNG: per sample, with probability `mixed` each tile draws on its own
    (compressed with probability `prob`), else one draw compresses all its tiles or none. -> a flag per tile,
    in the order `pixel_values` holds them (image-token runs over the flattened batch)."""
    flags: list[bool] = []
    drawn: dict[tuple[int, int], bool | None] = {}  # sample -> its one rate, or None: per tile
    # with mixed == 0 nothing extra is drawn, so such runs keep the random stream (and resume) they had before
    for row in range(batch.input_ids.shape[0]):
        slots = (batch.input_ids[row] == image_token_id).nonzero()[:, 0].tolist()
        for first in slots[::per_tile]:
            key = (row, int(batch.seq_ids[row, first]))
            if key not in drawn:
                drawn[key] = None if mixed > 0 and bool(torch.rand(()) < mixed) else bool(torch.rand(()) < prob)
            flags.append(bool(torch.rand(()) < prob) if drawn[key] is None else drawn[key])
    return flags


def compress_batch(batch: Batch, flags: list[bool], image_token_id: int, per_tile: int) -> Batch:
    """The batch with compressed tiles' unused `<IMG_CONTEXT>` slots removed from every per-token tensor and the
    positions of each sample dense again (0, 1, 2, ... over what is kept), rows right-padded anew."""
    counts = tiles_per_row(batch.input_ids, image_token_id, per_tile)
    if sum(counts) != len(flags):
        raise ConfigError(f"the batch holds {sum(counts)} tiles but {len(flags)} compression flags were given")
    keeps, start = [], 0
    for row, n in enumerate(counts):
        keeps.append(torch.tensor(keep_mask(batch.input_ids[row].tolist(), flags[start:start + n], image_token_id,
                                            per_tile)))
        start += n
    width = max(int(k.sum()) for k in keeps)
    b = len(keeps)
    input_ids = torch.zeros(b, width, dtype=batch.input_ids.dtype)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=batch.labels.dtype)
    seq_ids = torch.full((b, width), -1, dtype=batch.seq_ids.dtype)
    loss_weight = torch.zeros(b, width, dtype=batch.loss_weight.dtype)
    position_ids = torch.zeros(b, width, dtype=batch.position_ids.dtype)
    for row, keep in enumerate(keeps):
        n = int(keep.sum())
        input_ids[row, :n] = batch.input_ids[row][keep]
        labels[row, :n] = batch.labels[row][keep]
        seq_ids[row, :n] = batch.seq_ids[row][keep]
        loss_weight[row, :n] = batch.loss_weight[row][keep]
        for s in seq_ids[row, :n].unique().tolist():
            if s >= 0:
                at = (seq_ids[row] == s).nonzero()[:, 0]
                position_ids[row, at] = torch.arange(len(at), dtype=position_ids.dtype)
    return replace(batch, input_ids=input_ids, labels=labels, seq_ids=seq_ids, loss_weight=loss_weight,
                   position_ids=position_ids)


def supervised(batch: Batch) -> torch.Tensor:
    """(B, T-1) mask of the shifted targets that carry a label."""
    return (batch.labels[:, 1:] != IGNORE_INDEX) & (batch.seq_ids[:, 1:] >= 0)


def token_kl(ref_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || policy) per row of logits (N, V) -> (N,), in fp32."""
    ref = F.log_softmax(ref_logits.float(), dim=-1)
    pol = F.log_softmax(policy_logits.float(), dim=-1)
    return (ref.exp() * (ref - pol)).sum(-1)


def _layout(batch: Batch, device: torch.device):
    from .trainer import attention_layout
    layout = attention_layout(batch.seq_ids)
    return None if layout is None else layout.to(device)


# ---------------------------------------------------------------- the objectives

class ConsistencyObjective(StatelessObjective):
    """sum(w * KL(reference(full tiles) || policy(sampled rate))) / sum(w) over the global batch's targets.
    Nothing to save: the rate draws come from the global RNG, which the checkpoint restores."""

    def __init__(self, reference: nn.Module, image_token_id: int, per_tile: int, compress_prob: float = 0.5,
                 mixed_prob: float = 0.0) -> None:
        self.reference, self.image_token_id, self.per_tile = reference, image_token_id, per_tile
        self.compress_prob, self.mixed_prob = compress_prob, mixed_prob
        self._tiles = [0, 0]  # this step's tiles, compressed ones

    def weight(self, batch: Batch) -> torch.Tensor:
        return batch.loss_weight[:, 1:].sum()

    def step_statistics(self) -> dict[str, torch.Tensor]:
        (tiles, compressed), self._tiles = self._tiles, [0, 0]
        return {"tiles": torch.tensor(float(tiles)), "compressed_tiles": torch.tensor(float(compressed))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"compressed_fraction": sums.get("compressed_tiles", 0.0) / max(sums.get("tiles", 0.0), 1.0)}

    def __call__(self, model: nn.Module, batch: Batch, weight_total: torch.Tensor) -> torch.Tensor:
        device = weight_total.device
        flags = draw_rates(batch, self.compress_prob, self.image_token_id, self.per_tile, self.mixed_prob)
        self._tiles[0] += len(flags)
        self._tiles[1] += sum(flags)
        small = compress_batch(batch, flags, self.image_token_id, self.per_tile) if any(flags) else batch
        full_b, small_b = batch.to(device), small.to(device)
        with torch.no_grad():
            ref = self.reference(full_b.input_ids, full_b.position_ids, _layout(batch, device), full_b.pixel_values)
        compress = torch.tensor(flags, dtype=torch.bool, device=device) if flags else None
        pol = model(small_b.input_ids, small_b.position_ids, _layout(small, device), small_b.pixel_values,
                    compress=compress)
        m_ref, m_pol = supervised(full_b), supervised(small_b)
        kl = token_kl(ref[:, :-1][m_ref], pol[:, :-1][m_pol])
        return (kl * small_b.loss_weight[:, 1:][m_pol]).sum() / weight_total


class RouterLabels:
    """Labels from loss ratios: 0 (compress) below the `percentile` of a sliding window of recent ratios, else 1;
    class weights that balance the window's two classes."""

    def __init__(self, percentile: float = 50.0, window: int = 2048) -> None:
        self.percentile, self.history = percentile, deque(maxlen=window)
        self.tau = float("nan")  # the latest threshold

    def __call__(self, ratios: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = torch.isfinite(ratios)
        self.history.extend(ratios[valid].tolist())
        labels = torch.full(ratios.shape, IGNORE_INDEX, dtype=torch.long)
        if not self.history:
            return labels, torch.ones(2)
        window = np.asarray(self.history)
        tau = self.tau = float(np.percentile(window, self.percentile))
        labels[valid] = (ratios[valid] >= tau).long()
        low = float(np.clip((window < tau).mean(), 0.05, 0.95))
        return labels, torch.tensor([0.5 / low, 0.5 / (1 - low)])


class RouterObjective:
    """Class-balanced cross-entropy of the router's logits against `RouterLabels` of each tile's loss ratio."""

    def __init__(self, reference: nn.Module, image_token_id: int, per_tile: int, percentile: float = 50.0,
                 window: int = 2048, chunk: int = 32) -> None:
        self.reference, self.image_token_id, self.per_tile, self.chunk = reference, image_token_id, per_tile, chunk
        self.labels = RouterLabels(percentile, window)
        self.last: dict = {}  # the latest micro-batch's ratios and labels, for inspection
        self._sums = dict.fromkeys(("labelled", "labelled_compress", "correct"), 0.0)

    def weight(self, batch: Batch) -> torch.Tensor:
        return torch.tensor(0.0 if batch.pixel_values is None else float(batch.pixel_values.shape[0]))

    def step_statistics(self) -> dict[str, torch.Tensor]:
        sums, self._sums = self._sums, dict.fromkeys(self._sums, 0.0)
        return {k: torch.tensor(v) for k, v in sums.items()}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        labelled = max(sums.get("labelled", 0.0), 1.0)
        row = {"router_accuracy": sums.get("correct", 0.0) / labelled,
               "compress_label_fraction": sums.get("labelled_compress", 0.0) / labelled}
        if math.isfinite(self.labels.tau):
            row["router_tau"] = self.labels.tau
        return row

    def state_dict(self) -> dict:  # JSON (the trainer state): the window, so a resumed run labels the same
        return {"history": list(self.labels.history),
                "tau": self.labels.tau if math.isfinite(self.labels.tau) else None}

    def load_state_dict(self, state: dict) -> None:
        self.labels.history.clear()
        self.labels.history.extend(float(x) for x in state.get("history", []))
        tau = state.get("tau")
        self.labels.tau = float("nan") if tau is None else float(tau)

    def __call__(self, model: nn.Module, batch: Batch, weight_total: torch.Tensor) -> torch.Tensor:
        inner = getattr(model, "module", model)
        if batch.pixel_values is None:  # nothing to route: a zero that still reaches the router's parameters
            return sum(p.sum() for p in inner.gating.parameters()) * 0.0
        b = batch.to(weight_total.device)
        ratios = self.loss_ratios(inner, b)
        labels, class_weight = self.labels(ratios)
        logits = model(None, None, None, b.pixel_values, router=True)
        ce = F.cross_entropy(logits.float(), labels.to(logits.device), weight=class_weight.to(logits.device),
                             ignore_index=IGNORE_INDEX, reduction="sum")
        self.last = {"ratios": ratios, "labels": labels}
        seen = labels != IGNORE_INDEX
        self._sums["labelled"] += float(seen.sum())
        self._sums["labelled_compress"] += float((labels[seen] == 0).sum())
        self._sums["correct"] += float((logits.detach().argmax(-1).cpu()[seen] == labels[seen]).sum())
        return ce / weight_total

    @torch.no_grad()
    def loss_ratios(self, model: nn.Module, b: Batch) -> torch.Tensor:
        """(tiles,) r per tile: mean KL to the reference with that tile alone compressed, over the same with
        nothing compressed (NaN for tiles of samples without supervised tokens)."""
        if int(b.seq_ids.max()) > 0:
            raise ConfigError("--vico router needs one sample per row: drop --packed")
        ref = self.reference(b.input_ids, b.position_ids, None, b.pixel_values)
        feats = model.encode_tiles(b.pixel_values, "both")
        counts = tiles_per_row(b.input_ids.cpu(), self.image_token_id, self.per_tile)
        variants = []  # (row, first tile, flags over the row's tiles)
        start = 0
        for row, n in enumerate(counts):
            if n:
                variants += [(row, start, [j == k for j in range(n)]) for k in [-1, *range(n)]]
            start += n
        losses = []
        for i in range(0, len(variants), self.chunk):
            losses += self._variant_losses(model, b, ref, feats, variants[i:i + self.chunk])
        ratios, at = [], 0
        for n in counts:
            if n:
                none, each = losses[at], losses[at + 1:at + 1 + n]
                ratios += [x / max(none, 1e-8) for x in each]
                at += n + 1
        return torch.tensor(ratios, dtype=torch.float64)

    def _variant_losses(self, model, b: Batch, ref: torch.Tensor, feats, variants) -> list[float]:
        rows = []
        for row, first, flags in variants:
            real = b.seq_ids[row] >= 0
            ids = b.input_ids[row][real]
            keep = torch.tensor(keep_mask(ids.tolist(), flags, self.image_token_id, self.per_tile), device=ids.device)
            tokens = choose(feats.full[first:first + len(flags)], feats.small[first:first + len(flags)], flags)
            rows.append((model.embed(ids[keep][None], image_features=tokens)[0], b.labels[row][real][keep], row))
        width = max(e.shape[0] for e, _, _ in rows)
        embeds = torch.zeros(len(rows), width, rows[0][0].shape[-1], dtype=rows[0][0].dtype, device=ref.device)
        for i, (e, _, _) in enumerate(rows):
            embeds[i, :e.shape[0]] = e
        positions = torch.arange(width, device=ref.device)[None].expand(len(rows), -1)
        logits = model.language_model.logits(model.language_model(embeds, positions))
        out = []
        for i, (e, labels, row) in enumerate(rows):
            mine = labels[1:] != IGNORE_INDEX
            theirs = supervised(b)[row]
            if not mine.any():
                out.append(float("nan"))
                continue
            kl = token_kl(ref[row, :-1][theirs], logits[i, :e.shape[0] - 1][mine])
            out.append(float(kl.mean()))
        return out
