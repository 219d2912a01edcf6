"""The training loop on the tiny model: loss goes down, freezing flags and stage presets train exactly the right
parameters, accumulation / packing / gradient checkpointing leave the losses unchanged, checkpoints load in
chat, metrics and the loss curve are written, and the CLI runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import make_dataset

from internvl.chat import from_pretrained
from internvl.cli import main
from internvl.errors import ConfigError
from internvl.train.args import TrainConfig
from internvl.train.metrics import MetricsLog, draw_loss_curve, read_metrics
from internvl.train.optim import cosine_lr_factor, param_groups
from internvl.models.layers import Segments
from internvl.presets import PRESETS
from internvl.processing.tokenizer import byte_tokenizer
from internvl.train.data import DataConfig, SFTDataset
from internvl.train.packing import PackedCollator, attention_mask_from_seq_ids
from internvl.train.trainer import attention_layout, prepare_model, train

FAST = dict(model="tiny-random", tokenizer="byte", lr=1e-3, max_dynamic_patch=1, progress=False, save_steps=0,
            warmup_ratio=0.1)


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=16)


def run(tmp_path, meta, name: str, **kw) -> list[float]:
    out = tmp_path / name
    train(TrainConfig(meta_path=str(meta), output_dir=str(out), **{**FAST, **kw}))
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


def test_thirty_steps_lower_the_loss_and_the_checkpoint_chats(tmp_path, meta):
    losses = run(tmp_path, meta, "a", max_steps=30, per_device_batch_size=4, save_steps=10, save_total_limit=2)
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]  # ~5.7 -> ~2.4 on this set
    out = tmp_path / "a"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]  # limit 2
    assert (out / "latest").read_text().strip() == "checkpoint-30"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[0]["lr"] < rows[3]["lr"] and rows[-1]["lr"] < rows[3]["lr"]  # warmup, then decay
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["samples"] == 4 for r in rows)
    with Image.open(out / "loss_curve.png") as png:
        assert png.format == "PNG" and png.size == (800, 480)
    # the checkpoint is an ordinary official-layout checkpoint: chat loads it as it is
    model, tok = from_pretrained(out / "checkpoint-30")
    assert json.loads((out / "checkpoint-30" / "config.json").read_text())["architectures"] == ["InternVLChatModel"]
    answer = model.chat(tok, None, "What is 2 plus 3?", {"max_new_tokens": 4})
    assert isinstance(answer, str)
    # the run directory, or its `latest` file, means the newest checkpoint
    for alias in (out, out / "latest"):
        again, _ = from_pretrained(alias)
        assert again.chat(tok, None, "What is 2 plus 3?", {"max_new_tokens": 4}) == answer


STAGES = {
    # flags -> the parts (or name patterns) that train
    "stage 1": (dict(stage="1"), {"mlp1"}),
    "stage 1.5": (dict(stage="1.5"), {"vision_model", "mlp1"}),
    "stage 2": (dict(stage="2"), {"vision_model", "mlp1", "language_model"}),
    "no flags": (dict(), {"vision_model", "mlp1", "language_model"}),
    "freeze llm": (dict(freeze_llm=True), {"vision_model", "mlp1"}),
    "freeze all but llm": (dict(freeze_backbone=True, freeze_mlp=True), {"language_model"}),
    "stage 1 + last vit layer": (dict(stage="1", unfreeze_vit_layers=1), {"mlp1", "vision_model.encoder.layers.1."}),
    "official negative count": (dict(stage="1", unfreeze_vit_layers=-1), {"mlp1", "vision_model.encoder.layers.1."}),
    "stage 2 llm lora": (dict(stage="2", use_llm_lora=4), {"vision_model", "mlp1", "language_model:lora"}),
    "llm lora, frozen vit": (dict(use_llm_lora=4, freeze_backbone=True), {"mlp1", "language_model:lora"}),
    "both lora, frozen mlp": (dict(use_llm_lora=4, use_backbone_lora=2, freeze_mlp=True),
                              {"vision_model:lora", "language_model:lora"}),
    "vit lora + last layer": (dict(use_backbone_lora=2, unfreeze_vit_layers=1, freeze_llm=True, freeze_mlp=True),
                              {"vision_model:lora", "vision_model.encoder.layers.1."}),
}


def expected_trainable(name: str, rules: set[str]) -> bool:
    lora = ".lora_A." in name or ".lora_B." in name
    for rule in rules:
        prefix, _, kind = rule.partition(":")
        if name.startswith(prefix) and (kind != "lora" or lora):
            return True
    return False


@pytest.mark.parametrize("case", sorted(STAGES))
def test_freezing_flags_train_exactly_the_right_parameters(case, tmp_path, meta):
    flags, rules = STAGES[case]
    cfg = TrainConfig(meta_path=str(meta), output_dir=str(tmp_path), **{**FAST, **flags})
    model, _, _, _ = prepare_model(cfg, None)
    names = dict(model.named_parameters())
    want = {n for n in names if expected_trainable(n, rules)}
    got = {n for n, p in names.items() if p.requires_grad}
    assert got == want, (sorted(got - want)[:5], sorted(want - got)[:5])
    assert got  # anti-vacuity: something trains in every case
    if any(":lora" in r for r in rules):
        assert any(".lora_A." in n for n in got) and not any(n.endswith("q_proj.base_layer.weight") for n in got)


def test_everything_frozen_is_an_error(tmp_path, meta):
    cfg = TrainConfig(meta_path=str(meta), output_dir=str(tmp_path), freeze_llm=True, freeze_backbone=True,
                      freeze_mlp=True, **FAST)
    model, _, _, _ = prepare_model(cfg, None)
    with pytest.raises(ConfigError, match="nothing to train"):
        param_groups(model, 0.05)


def test_weight_decay_skips_biases_norms_and_layer_scales(tmp_path, meta):
    model, _, _, _ = prepare_model(TrainConfig(meta_path=str(meta), output_dir=str(tmp_path), **FAST), None)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "vision_model.encoder.layers.0.ls1" in no and "language_model.norm.weight" in no
    assert "vision_model.embeddings.position_embedding" in no and "mlp1.1.bias" in no
    assert "language_model.layers.0.self_attn.q_proj.weight" in {names[id(p)] for p in decay["params"]}


def test_cosine_schedule_with_warmup():
    f = [cosine_lr_factor(s, total_steps=10, warmup_steps=2) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)  # linear warmup, never 0
    assert f[2] == pytest.approx(1.0) and all(a > b for a, b in zip(f[2:], f[3:]))  # then monotone decay
    assert cosine_lr_factor(10, 10, 2) == pytest.approx(0.0)
    assert cosine_lr_factor(10, 10, 2, min_ratio=0.1) == pytest.approx(0.1)


def test_accumulation_packing_and_checkpointing_do_not_change_the_losses(tmp_path, meta):
    """One batch of 4 == 2 accumulated micro-batches of 2 == the same packed == with gradient checkpointing
    (fp32; only summation order differs, so 1e-5)."""
    common = dict(max_steps=4, max_dynamic_patch=2)
    ref = run(tmp_path, meta, "big", per_device_batch_size=4, **common)
    accum = run(tmp_path, meta, "accum", per_device_batch_size=2, gradient_accumulation_steps=2, **common)
    packed = run(tmp_path, meta, "packed", per_device_batch_size=4, packed=True, max_packed_tokens=600, **common)
    ckpt = run(tmp_path, meta, "ckpt", per_device_batch_size=4, grad_checkpoint=True, packed=True,
               max_packed_tokens=600, **common)
    for other in (accum, packed, ckpt):
        assert other == pytest.approx(ref, abs=1e-5)
    assert ref[-1] < ref[0]
    # anti-vacuity: a 600-token budget really puts several samples (~210-255 tokens each) in a row
    ds = SFTDataset(meta, byte_tokenizer(), DataConfig.from_model(PRESETS["tiny-random"].config, max_dynamic_patch=2))
    assert int(PackedCollator(0, "square", 600)([ds[i] for i in range(4)]).seq_ids.max()) >= 1


def test_packed_rows_attend_per_sample_like_the_dense_mask(tmp_path, meta):
    """`Segments` (gather each sample into its own row) == the dense block-diagonal mask == one sample per row."""
    model, tok, _, _ = prepare_model(TrainConfig(meta_path=str(meta), output_dir=str(tmp_path), **FAST), None)
    ds = SFTDataset(meta, tok, DataConfig.from_model(model.config, max_dynamic_patch=1))
    samples = [ds[i] for i in range(6)]
    budget = 2 * max(len(x.input_ids) for x in samples)
    packed = PackedCollator(tok.pad_token_id, "square", max_tokens=budget)(samples)
    assert packed.input_ids.shape[0] < 6 and int(packed.seq_ids.max()) >= 1  # rows really hold several samples
    layout = attention_layout(packed.seq_ids)
    assert isinstance(layout, Segments)
    model.eval()
    with torch.no_grad():
        seg = model(packed.input_ids, packed.position_ids, layout, packed.pixel_values)
        dense = model(packed.input_ids, packed.position_ids, attention_mask_from_seq_ids(packed.seq_ids),
                      packed.pixel_values)
        single = PackedCollator(tok.pad_token_id, "square")(samples)
        assert attention_layout(single.seq_ids) is None  # one sample per row: plain causal, no mask
        alone = model(single.input_ids, single.position_ids, None, single.pixel_values)
    real = packed.seq_ids >= 0
    torch.testing.assert_close(seg[real], dense[real], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(seg).all()
    for i, (row, sid) in enumerate(packed.slots):  # each sample's logits equal its own unpacked row's
        n = len(samples[i].input_ids)
        torch.testing.assert_close(seg[row][packed.seq_ids[row] == sid], alone[i, :n], atol=1e-5, rtol=1e-5)


def test_segments_attention_equals_the_dense_mask():
    """Samples of very different lengths (several length groups, some padded) and grouped KV heads."""
    lengths = [[3, 17, 1, 9], [16, 2, 12], [40]]
    t = 42
    seq_ids = torch.full((3, t), -1)
    for row, ls in enumerate(lengths):
        pos = 0
        for s, n in enumerate(ls):
            seq_ids[row, pos:pos + n] = s
            pos += n
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, t, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(3, 2, t, 8, generator=g, requires_grad=True) for _ in range(2))
    seg = Segments(seq_ids)
    assert len(seg.groups) >= 3 and any(slot is not None for *_, slot in seg.groups)
    out = seg.attend(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask_from_seq_ids(seq_ids),
                                                           enable_gqa=True)
    real = (seq_ids >= 0)[:, None, :, None]
    torch.testing.assert_close(out * real, ref * real, atol=1e-6, rtol=1e-5)
    assert (out[~real.expand_as(out)] == 0).all()
    grads = torch.autograd.grad((out * real).square().sum(), (q, k, v))
    want = torch.autograd.grad((ref * real).square().sum(), (q, k, v))
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_segments_keep_the_dtype_the_attention_returns():
    """Under CUDA autocast SDPA turns fp32 q/k/v into a bf16 result (CPU autocast leaves it fp32, which is why
    only a GPU run of packed bf16 training saw this): the packed output is built in the attention's dtype."""
    seq_ids = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
    q, k, v = (torch.randn(2, 2, 6, 4) for _ in range(3))

    def bf16_attention(q, k, v):  # what autocast does to SDPA on CUDA
        return torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                                                is_causal=True)

    out = Segments(seq_ids).attend(q, k, v, causal_attention=bf16_attention)
    ref = Segments(seq_ids).attend(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_dataloader_workers_give_the_same_losses(tmp_path, meta):
    common = dict(max_steps=3, per_device_batch_size=4, packed=True, max_packed_tokens=600)
    assert run(tmp_path, meta, "w0", **common) == run(tmp_path, meta, "w2", num_workers=2, **common)


def test_bf16_autocast_trains(tmp_path, meta):
    losses = run(tmp_path, meta, "bf16", max_steps=6, per_device_batch_size=4, bf16=True)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_a_used_output_dir_needs_resume(tmp_path, meta):
    run(tmp_path, meta, "used", max_steps=1, per_device_batch_size=2)
    with pytest.raises(ConfigError, match="--resume"):
        run(tmp_path, meta, "used", max_steps=2, per_device_batch_size=2)


def test_resuming_a_run_past_the_new_max_steps_is_refused(tmp_path, meta):
    run(tmp_path, meta, "long", max_steps=3, per_device_batch_size=2)
    with pytest.raises(ConfigError, match="at step 3, past this run's 2 steps"):
        run(tmp_path, meta, "long", max_steps=2, per_device_batch_size=2, resume=True)
    assert not (tmp_path / "long" / "checkpoint-2").exists()


def test_metrics_log_keeps_only_the_resumed_past(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]  # a torn last line is dropped
    log = MetricsLog(tmp_path, resume_step=3, tensorboard=False)
    log.log({"step": 4, "loss": 0.2})
    log.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.2)]
    MetricsLog(tmp_path, resume_step=None, tensorboard=False).close()  # a fresh run starts empty
    assert read_metrics(path) == []


def test_loss_curve_draws_the_curve(tmp_path):
    path = draw_loss_curve(list(range(1, 51)), [5.0 - 0.08 * i for i in range(50)], tmp_path / "c.png")
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    red = int(((rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)).sum())
    assert red > 300  # the smoothed curve is drawn in red across the plot


def test_cli_train_then_chat(tmp_path, meta, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--model", "tiny-random", "--tokenizer", "byte", "--meta-path", str(meta),
                 "--output-dir", str(out), "--max-steps", "2", "--per-device-batch-size", "2", "--lr", "1e-3",
                 "--stage", "2", "--max-dynamic-patch", "1", "--no-progress", "--packed",
                 "--max-packed-tokens", "520"]) == 0
    assert "checkpoint-2" in capsys.readouterr().out
    assert main(["chat", "--model", str(out / "checkpoint-2"), "--max-new-tokens", "3", "--dtype", "fp32",
                 "What is 1 plus 1?"]) == 0
    assert main(["train", "--model", "tiny-random", "--meta-path", str(meta), "--output-dir", str(tmp_path / "x"),
                 "--no-progress"]) == 2  # a preset without --tokenizer: one clear error line
    assert "--tokenizer" in capsys.readouterr().err


def test_train_from_a_checkpoint_directory(tmp_path, meta):
    """--model may be a checkpoint (tokenizer files travel from it into the new checkpoints)."""
    first = tmp_path / "first"
    train(TrainConfig(meta_path=str(meta), output_dir=str(first), max_steps=1, per_device_batch_size=2, **FAST))
    cfg = {**FAST, "model": str(first / "checkpoint-1"), "tokenizer": None}
    train(TrainConfig(meta_path=str(meta), output_dir=str(tmp_path / "second"), max_steps=1, per_device_batch_size=2,
                      **cfg))
    second = tmp_path / "second" / "checkpoint-1"
    assert (second / "tokenizer.json").read_bytes() == (first / "checkpoint-1" / "tokenizer.json").read_bytes()
    assert from_pretrained(second)[0] is not None
    # a preset with --tokenizer DIR: that directory's files are copied unchanged, not re-serialized
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_bytes((first / "checkpoint-1" / "tokenizer.json").read_bytes())
    config = json.loads((first / "checkpoint-1" / "tokenizer_config.json").read_text())
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 1234}))
    train(TrainConfig(meta_path=str(meta), output_dir=str(tmp_path / "third"), max_steps=1, per_device_batch_size=2,
                      **{**FAST, "tokenizer": str(tok_dir)}))
    saved = json.loads((tmp_path / "third" / "checkpoint-1" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 1234
