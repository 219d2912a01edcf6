"""ViCO (`internvl train --vico consistency|router`): compressed batches equal the inference prompt, the
consistency loss is the KL to the frozen full-token reference, router labels follow the loss ratio against a
windowed percentile with balanced classes, and each stage trains exactly its parameters."""

from __future__ import annotations

import json
import math

import pytest
import torch
from synthetic import make_dataset

from internvl.chat import from_pretrained
from internvl.cli import main
from internvl.checkpoint.loader import load_model, save_checkpoint
from internvl.errors import ConfigError
from internvl.models.flash import choose, compress_prompt, keep_mask
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.processing.prompt import IMG_CONTEXT_TOKEN
from internvl.processing.tokenizer import byte_tokenizer
from internvl.train.args import TrainConfig
from internvl.train.data import DataConfig, SFTDataset
from internvl.train.metrics import read_metrics
from internvl.train.packing import PackedCollator
from internvl.train.trainer import SFTInternVL, train
from internvl.train.vico import (ConsistencyObjective, RouterLabels, RouterObjective, add_flash_modules,
                                 compress_batch, draw_rates, supervised, tiles_per_row, token_kl)

FAST = dict(tokenizer=None, lr=1e-3, max_dynamic_patch=3, progress=False, save_steps=0, warmup_ratio=0.0,
            per_device_batch_size=4)


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=12, text_every=4, wide_every=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A plain (non-Flash) tiny-random checkpoint with the byte tokenizer."""
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = InternVL(PRESETS["tiny-random"].config.replace(image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)))
    model.init_weights(std=0.2)
    path = save_checkpoint(model, tmp_path_factory.mktemp("base") / "tiny", "official")
    tok.save_pretrained(path)
    return path


def flash_policy(base) -> SFTInternVL:
    model, _, _ = load_model(base, dtype=torch.float32, cls=SFTInternVL)
    torch.manual_seed(1)
    add_flash_modules(model, 0.0, 0.5)
    model.img_context_token_id = model.config.image_token_id
    return model.eval()


def batch_of(meta, model, n=4):
    tok = byte_tokenizer()
    ds = SFTDataset(str(meta), tok, DataConfig.from_model(model.config, max_dynamic_patch=3))
    samples = [ds[i] for i in range(n)]
    return PackedCollator(tok.pad_token_id, "token")(samples), samples


def test_compressed_batch_is_the_inference_prompt(meta, base):
    """compress_batch + the training forward with `compress` gives, per sample, the logits inference gives for
    the compressed prompt (compress_prompt + routed features, dense positions)."""
    model = flash_policy(base)
    batch, samples = batch_of(meta, model)
    ctx, n = model.img_context_token_id, model.num_image_token
    tiles = [int((s.input_ids == ctx).sum()) // n for s in samples]
    assert sum(tiles) >= 4 and max(tiles) > 1
    flags = [i % 2 == 0 for i in range(sum(tiles))]
    small = compress_batch(batch, flags, ctx, n)
    with torch.no_grad():
        got = model(small.input_ids, small.position_ids, None, batch.pixel_values,
                    compress=torch.tensor(flags))
        start = 0
        for row, s in enumerate(samples):
            f = flags[start:start + tiles[row]]
            ids = compress_prompt(s.input_ids.tolist(), f, ctx, n)
            real = small.seq_ids[row] >= 0
            assert small.input_ids[row][real].tolist() == ids
            assert small.position_ids[row][real].tolist() == list(range(len(ids)))
            if tiles[row]:
                feats = model.encode_tiles(s.pixel_values, "both")
                want = InternVL.forward(model, torch.tensor([ids]), image_features=choose(feats.full, feats.small, f))
                torch.testing.assert_close(got[row, :len(ids)], want.logits[0], atol=1e-5, rtol=1e-5)
            start += tiles[row]
    # the supervised targets survive compression in order
    assert torch.equal(batch.labels[:, 1:][supervised(batch)], small.labels[:, 1:][supervised(small)])


def test_rates_are_one_per_sample_unless_mixed(meta, base):
    model = flash_policy(base)
    batch, _ = batch_of(meta, model, n=8)
    ctx, n = model.img_context_token_id, model.num_image_token
    counts = [c for c in tiles_per_row(batch.input_ids, ctx, n) if c]
    assert max(counts) > 1

    def samples_split(flags):
        out, at = [], 0
        for c in counts:
            out.append(flags[at:at + c])
            at += c
        return out
    uniform = mixed = 0
    for seed in range(40):
        torch.manual_seed(seed)
        per_sample = samples_split(draw_rates(batch, 0.5, ctx, n))
        assert all(len(set(f)) == 1 for f in per_sample)  # the paper: all tiles of a sample alike
        torch.manual_seed(seed)
        drawn = samples_split(draw_rates(batch, 0.5, ctx, n, mixed=1.0))
        mixed += sum(len(set(f)) > 1 for f in drawn)
        uniform += sum(len(set(f)) == 1 for f in drawn if len(f) > 1)
    assert mixed > 0 and uniform > 0  # per tile: some samples mix rates, and some draw all alike by chance
    torch.manual_seed(0)
    assert draw_rates(batch, 1.0, ctx, n, mixed=0.5) == [True] * sum(counts)
    assert draw_rates(batch, 0.0, ctx, n, mixed=0.5) == [False] * sum(counts)


def test_consistency_loss_is_kl_to_the_full_token_reference(meta, base):
    policy = flash_policy(base)
    reference, _, _ = load_model(base, dtype=torch.float32, cls=SFTInternVL)
    reference.img_context_token_id = policy.img_context_token_id
    batch, _ = batch_of(meta, policy)
    total = batch.loss_weight[:, 1:].sum()
    ctx, n = policy.img_context_token_id, policy.num_image_token
    never = ConsistencyObjective(reference, ctx, n, compress_prob=0.0)
    assert float(never(policy, batch, total).detach()) == pytest.approx(0.0, abs=1e-6)  # same weights, full tiles
    always = ConsistencyObjective(reference, ctx, n, compress_prob=1.0)
    loss = always(policy, batch, total)
    # re-typed: mean KL over the supervised targets, each sample compressed in full
    with torch.no_grad():
        ref = reference(batch.input_ids, batch.position_ids, None, batch.pixel_values)
        flags = [True] * batch.pixel_values.shape[0]
        small = compress_batch(batch, flags, ctx, n)
        pol = policy(small.input_ids, small.position_ids, None, batch.pixel_values, compress=torch.tensor(flags))
        kl = token_kl(ref[:, :-1][supervised(batch)], pol[:, :-1][supervised(small)])
    assert float(loss.detach()) == pytest.approx(float(kl.mean()), rel=1e-5) and float(loss.detach()) > 0.01
    loss.backward()
    assert policy.mlp2[1].weight.grad is not None and policy.mlp2[1].weight.grad.abs().sum() > 0
    assert policy.gating.gate[1].weight.grad is None  # no routing happens in this stage


def test_router_labels_percentile_window_and_balance():
    labels = RouterLabels(percentile=50, window=4)
    got, weight = labels(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert got.tolist() == [0, 0, 1, 1] and torch.allclose(weight, torch.tensor([1.0, 1.0]))
    # the window keeps the last 4: [3, 4, 10, 20] -> median 7
    got, _ = labels(torch.tensor([10.0, 20.0], dtype=torch.float64))
    assert got.tolist() == [1, 1]
    got, _ = labels(torch.tensor([5.0, float("nan")], dtype=torch.float64))  # window [4, 10, 20, 5]: 7.5
    assert got.tolist() == [0, -100]
    skewed = RouterLabels(percentile=25, window=100)
    got, weight = skewed(torch.arange(8, dtype=torch.float64))
    assert got.tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    frac = 2 / 8  # a quarter compress: each class weighted so both sum to the same
    assert torch.allclose(weight, torch.tensor([0.5 / frac, 0.5 / (1 - frac)]))


def test_router_ratios_compress_one_tile_at_a_time(meta, base):
    policy = flash_policy(base)
    reference, _, _ = load_model(base, dtype=torch.float32, cls=SFTInternVL)
    reference.img_context_token_id = policy.img_context_token_id
    batch, samples = batch_of(meta, policy)
    ctx, n = policy.img_context_token_id, policy.num_image_token
    objective = RouterObjective(reference, ctx, n, chunk=3)
    ratios = objective.loss_ratios(policy, batch)
    assert ratios.shape[0] == batch.pixel_values.shape[0]

    def mean_kl(sample, flags):
        """The per-sample mean KL with these tiles compressed, from the inference path."""
        keep = keep_mask(sample.input_ids.tolist(), flags, ctx, n)
        with torch.no_grad():
            ref = reference(sample.input_ids[None], torch.arange(len(sample.input_ids))[None], None,
                            sample.pixel_values)[0]
            feats = policy.encode_tiles(sample.pixel_values, "both")
            ids = torch.tensor([t for t, k in zip(sample.input_ids.tolist(), keep) if k])
            pol = InternVL.forward(policy, ids[None], image_features=choose(feats.full, feats.small, flags)).logits[0]
        labels = torch.tensor([t for t, k in zip(sample.labels.tolist(), keep) if k])
        return float(token_kl(ref[:-1][sample.labels[1:] != -100], pol[:-1][labels[1:] != -100]).mean())

    start = 0
    for s in samples:
        t = int((s.input_ids == ctx).sum()) // n
        if t:
            none = mean_kl(s, [False] * t)
            for j in range(t):
                one = mean_kl(s, [k == j for k in range(t)])
                assert float(ratios[start + j]) == pytest.approx(one / max(none, 1e-8), rel=1e-4)
        start += t


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, meta, base):
    """The consistency stage run on the plain checkpoint: 3 steps, a checkpoint at each."""
    out = tmp_path_factory.mktemp("vico") / "consistency"
    train(TrainConfig(model=str(base), meta_path=str(meta), output_dir=str(out), vico="consistency", max_steps=3,
                      vico_compress_prob=0.5, save_total_limit=0, **{**FAST, "save_steps": 1}))
    return out


def test_vico_stages_train_exactly_their_parameters(tmp_path, meta, base, stage1):
    """consistency: a plain checkpoint gains mlp2 + router and everything but the router trains; router: only
    pooling_before_gating and gating change. Both checkpoints are Flash checkpoints chat can load."""
    rows = read_metrics(stage1 / "metrics.jsonl")
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert sum(0 < r["compressed_fraction"] < 1 for r in rows) >= 1  # rates drawn per sample, not per batch
    first, last = load_model(stage1 / "checkpoint-1")[0].state_dict(), load_model(stage1 / "checkpoint-3")[0]
    assert last.config.flash_mode and last.config.flash_relative_threshold == 0.0
    start = load_model(base)[0].state_dict()
    changed = {k for k, v in last.state_dict().items() if k in start and not torch.equal(v, start[k])}
    assert any(k.startswith("language_model.") for k in changed) and any(k.startswith("mlp1.") for k in changed)
    assert any(k.startswith("vision_model.") for k in changed)
    moved = {k for k, v in last.state_dict().items() if not torch.equal(v, first[k])}
    assert any(k.startswith("mlp2.") for k in moved)
    assert not any(k.startswith(("pooling_before_gating.", "gating.")) for k in moved)  # the router is frozen

    out2 = tmp_path / "router"
    train(TrainConfig(model=str(stage1 / "checkpoint-3"), meta_path=str(meta), output_dir=str(out2), vico="router",
                      vico_reference=str(base), max_steps=2, router_window=64, flash_relative_threshold=0.25,
                      flash_absolute_threshold=0.4, **FAST))
    rows = read_metrics(out2 / "metrics.jsonl")
    assert all(0 <= r["router_accuracy"] <= 1 and 0 < r["compress_label_fraction"] < 1 for r in rows)
    stage2, _, _ = load_model(out2 / "checkpoint-2")
    before, after = last.state_dict(), stage2.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("pooling_before_gating.", "gating.")) for k in changed)
    assert stage2.config.flash_relative_threshold == 0.25 and stage2.config.flash_absolute_threshold == 0.4
    model, tok = from_pretrained(out2 / "checkpoint-2")
    assert isinstance(model.chat(tok, None, "What is 2 plus 3?", {"max_new_tokens": 3}), str)


@pytest.mark.parametrize("stage", ["consistency", "router"])
def test_stopped_and_resumed_vico_run_repeats_the_losses_exactly(stage, tmp_path, meta, base, stage1):
    """The compression draws (global RNG) and the router's window of ratios (saved with the trainer state)
    survive a resume: the split run logs exactly the uninterrupted run's losses and thresholds."""
    model = base if stage == "consistency" else stage1 / "checkpoint-3"
    kw = dict(model=str(model), meta_path=str(meta), vico=stage, vico_reference=str(base), max_steps=3,
              router_window=6, **FAST)
    train(TrainConfig(output_dir=str(tmp_path / "whole"), **kw))
    train(TrainConfig(output_dir=str(tmp_path / "split"), max_steps_this_run=1, **kw))
    if stage == "router":
        state = json.loads((tmp_path / "split" / "checkpoint-1" / "trainer_state" / "state.json").read_text())
        assert 0 < len(state["objective"]["history"]) <= 6
    second = train(TrainConfig(output_dir=str(tmp_path / "split"), resume=True, **kw))
    assert second["start_step"] == 1
    whole, split = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("whole", "split"))
    keys = ["loss", "compressed_fraction"] if stage == "consistency" else ["loss", "router_tau", "router_accuracy"]
    assert [[r[k] for k in keys] for r in split] == [[r[k] for k in keys] for r in whole]
    assert len(whole) == 3 and len({r["loss"] for r in whole}) == 3  # anti-vacuity: the losses move
    with pytest.raises(ConfigError, match="no --vico"):  # a ViCO checkpoint does not silently resume as SFT
        train(TrainConfig(output_dir=str(tmp_path / "split"), resume=True, max_steps=4,
                          **{k: v for k, v in kw.items() if k not in ("vico", "max_steps")}))


def test_vico_flag_errors(tmp_path, meta, base, capsys):
    kw = dict(model="x", meta_path=str(meta), output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="--vico-reference"):
        TrainConfig(vico="router", **kw)
    with pytest.raises(ConfigError, match="--packed"):
        TrainConfig(vico="router", vico_reference="y", packed=True, **kw)
    with pytest.raises(ConfigError, match="LoRA"):
        TrainConfig(vico="consistency", use_llm_lora=8, **kw)
    with pytest.raises(ConfigError, match="router-percentile"):
        TrainConfig(vico="consistency", router_percentile=100.0, **kw)
    with pytest.raises(ConfigError, match="compress-prob"):
        TrainConfig(vico="consistency", vico_compress_prob=1.5, **kw)
    with pytest.raises(ConfigError, match="mixed-prob"):
        TrainConfig(vico="consistency", vico_mixed_prob=-0.1, **kw)
    with pytest.raises(ConfigError, match="--method mpo"):
        TrainConfig(vico="consistency", method="mpo", **kw)
    with pytest.raises(ConfigError, match="--v2pe-stride"):
        TrainConfig(vico="consistency", v2pe_stride=0.5, **kw)
    with pytest.raises(ConfigError, match="--unfreeze-vit-layers"):
        TrainConfig(vico="router", vico_reference="y", unfreeze_vit_layers=2, **kw)
    with pytest.raises(ConfigError, match="router-window"):
        TrainConfig(vico="router", vico_reference="y", router_window=0, **kw)
    with pytest.raises(ConfigError, match="absolute-threshold"):
        TrainConfig(vico="consistency", flash_absolute_threshold=float("nan"), **kw)
    with pytest.raises(ConfigError, match="consistency on it first"):  # a plain model has no router to train
        train(TrainConfig(model=str(base), meta_path=str(meta), vico="router", vico_reference=str(base),
                          output_dir=str(tmp_path / "r"), max_steps=1, progress=False))
    with pytest.raises(ConfigError, match="preset"):
        train(TrainConfig(model="tiny-random", tokenizer="byte", meta_path=str(meta), vico="consistency",
                          output_dir=str(tmp_path / "p"), max_steps=1, progress=False))
    # the CLI: exit 2 and one line naming the problem, no traceback
    for flags, said in ((["--vico", "router"], "--vico-reference"),
                        (["--vico", "consistency", "--vico-compress-prob", "2"], "--vico-compress-prob")):
        assert main(["train", "--model", str(base), "--meta-path", str(meta), "--output-dir", str(tmp_path / "c"),
                     "--no-progress", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1 and "Traceback" not in err
