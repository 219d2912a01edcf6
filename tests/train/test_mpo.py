"""`internvl train --method mpo` end to end on tiny-random: the first step with policy = reference gives ln 2 and
2 ln 2; 30 steps on a handful of pairs drive the reward accuracy to 1; a stopped or killed (-9) run resumes to
the uninterrupted losses, delta included; --precompute-ref gives the on-the-fly losses; LoRA MPO merges to the
adapter model's logits; metrics and curves are written; bad settings are one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from synthetic import make_pairs

from internvl.chat import from_pretrained
from internvl.cli import main
from internvl.errors import ConfigError
from internvl.models.internvl import InternVL
from internvl.train.args import TrainConfig
from internvl.train.distributed import DistInfo
from internvl.train.lora import merged_state_dict
from internvl.train.metrics import read_metrics
from internvl.train.mpo import REFERENCE_FILE, build_objective
from internvl.train.optim import build_optimizer, cosine_schedule
from internvl.train.state import find_latest, load_start_model, plain_model
from internvl.train.trainer import SFTInternVL, StepContext, build_loader, prepare_model, train, train_step

LN2 = math.log(2)
BASE = dict(model="tiny-random", tokenizer="byte", method="mpo", max_dynamic_patch=1, progress=False, save_steps=0,
            per_device_batch_size=2)


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), n=8)


def rows(out) -> list[dict]:
    return read_metrics(out / "metrics.jsonl")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_first_step_with_policy_equal_to_reference(tmp_path, meta, lora):
    extra = dict(use_llm_lora=4, lora_dropout=0.1) if lora else {}
    train(TrainConfig(**BASE, **extra, meta_path=str(meta), output_dir=str(tmp_path / "out"), max_steps=1,
                      gradient_accumulation_steps=2))
    (row,) = rows(tmp_path / "out")
    assert row["loss_sigmoid"] == pytest.approx(LN2, abs=1e-5)
    assert row["loss_bco_pair"] == pytest.approx(2 * LN2, abs=1e-5)
    assert row["loss"] == pytest.approx(0.8 * LN2 + 0.4 * LN2 + row["loss_sft"], abs=1e-5)
    assert row["rewards/margins"] == 0 and row["rewards/accuracies"] == 0 and row["bco_delta"] == 0
    assert row["loss_sft"] > 1 and row["samples"] == 4 and row["tokens"] > 0 and row["tokens_per_s"] > 0


def test_thirty_steps_on_a_handful_of_pairs_learn_the_preference(tmp_path, meta):
    out = tmp_path / "fit"
    train(TrainConfig(**{**BASE, "per_device_batch_size": 4}, meta_path=str(meta), output_dir=str(out),
                      max_steps=30, lr=2e-3, warmup_ratio=0.0, log_steps=3))
    log = rows(out)
    assert [r["step"] for r in log] == list(range(3, 31, 3))
    assert log[-1]["rewards/accuracies"] == 1.0 and log[-2]["rewards/accuracies"] == 1.0
    margins = [r["rewards/margins"] for r in log]
    assert margins[-1] > 1.0 and margins[-1] > 5 * max(margins[0], 0.05)
    assert log[-1]["loss_sigmoid"] < 0.3 < LN2 and log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["bco_delta"] != log[0]["bco_delta"]
    for key in ("loss", "loss_sigmoid", "loss_bco_pair", "loss_sft", "rewards/chosen", "rewards/rejected",
                "rewards/accuracies", "rewards/margins", "bco_delta", "lr", "tokens_per_s"):
        assert all(key in r for r in log), key
    assert (out / "loss_curve.png").exists() and (out / "mpo_curves.png").exists()
    state = json.loads((out / "checkpoint-30" / "trainer_state" / "state.json").read_text())
    assert state["objective"]["bco_delta"]["mean"] == log[-1]["bco_delta"]
    model, tok = from_pretrained(out / "checkpoint-30")  # an ordinary checkpoint
    assert isinstance(model.chat(tok, None, "What is 1 plus 2?", {"max_new_tokens": 3}), str)


RESUME = dict(lr=1e-3, per_device_batch_size=2, gradient_accumulation_steps=2, drop_path_rate=0.2,
              warmup_ratio=0.2, max_steps=6)


@pytest.mark.parametrize("variant", ["on_the_fly", "precompute", "lora_packed"])
def test_stopped_and_resumed_run_repeats_losses_and_delta(tmp_path, meta, variant):
    extra = {"precompute": dict(precompute_ref=True),
             "lora_packed": dict(use_llm_lora=4, lora_dropout=0.1, packed=True, max_packed_tokens=600)}.get(variant, {})
    kw = {**BASE, **RESUME, **extra, "meta_path": str(meta)}
    train(TrainConfig(output_dir=str(tmp_path / "whole"), **kw))
    train(TrainConfig(output_dir=str(tmp_path / "split"), max_steps_this_run=2, **kw))
    state = json.loads((tmp_path / "split" / "checkpoint-2" / "trainer_state" / "state.json").read_text())
    assert state["objective"]["bco_delta"]["count"] == pytest.approx(4)  # one update per micro-batch
    second = train(TrainConfig(output_dir=str(tmp_path / "split"), resume=True, **kw))
    assert second["start_step"] == 2
    whole, split = rows(tmp_path / "whole"), rows(tmp_path / "split")
    assert len(whole) == 6
    for key in ("loss", "bco_delta", "rewards/margins", "loss_sft"):
        assert [r[key] for r in split] == [r[key] for r in whole], key  # bit-identical
    assert len({r["bco_delta"] for r in whole}) == 6


def test_trainer_features_under_mpo(tmp_path, meta):
    """Workers, bf16, gradient checkpointing and freezing work as for SFT: checkpointing and a worker process change
    nothing, the frozen vision tower does not move."""
    kw = {**BASE, "meta_path": str(meta), "max_steps": 3, "lr": 1e-3, "bf16": True, "freeze_backbone": True}
    train(TrainConfig(output_dir=str(tmp_path / "plain"), **kw))
    train(TrainConfig(output_dir=str(tmp_path / "feat"), grad_checkpoint=True, num_workers=1, **kw))
    assert [r["loss"] for r in rows(tmp_path / "feat")] == pytest.approx([r["loss"] for r in rows(tmp_path / "plain")],
                                                                         abs=1e-6)
    saved = load_file(tmp_path / "feat" / "checkpoint-3" / "model.safetensors")
    base, _, _ = load_start_model("tiny-random", "byte", 0)  # the preset rebuilt from the run's seed
    for name, t in base.state_dict().items():
        if name.startswith("vision_model."):
            assert torch.equal(saved[name], t), name
    assert not torch.equal(saved["mlp1.1.weight"], base.state_dict()["mlp1.1.weight"])


def test_precomputed_reference_gives_the_on_the_fly_losses(tmp_path, meta):
    kw = {**BASE, "meta_path": str(meta), "max_steps": 4, "lr": 1e-3, "gradient_accumulation_steps": 2}
    train(TrainConfig(output_dir=str(tmp_path / "fly"), **kw))
    train(TrainConfig(output_dir=str(tmp_path / "pre"), precompute_ref=True, **kw))
    table = torch.load(tmp_path / "pre" / REFERENCE_FILE, weights_only=True)["logps"]
    assert table.shape == (8, 2) and torch.isfinite(table).all() and (table < 0).all()
    for key in ("loss", "bco_delta", "rewards/chosen", "rewards/rejected"):
        assert [r[key] for r in rows(tmp_path / "pre")] == pytest.approx([r[key] for r in rows(tmp_path / "fly")],
                                                                         abs=1e-5), key


def test_reference_model_option(tmp_path, meta):
    """--ref-model: the reference is that checkpoint, so the first step's rewards are no longer 0."""
    other = tmp_path / "other"
    train(TrainConfig(**BASE, meta_path=str(meta), output_dir=str(other), max_steps=2, lr=5e-3))
    train(TrainConfig(**BASE, meta_path=str(meta), output_dir=str(tmp_path / "run"), max_steps=1,
                      ref_model=str(other / "checkpoint-2")))
    (row,) = rows(tmp_path / "run")
    assert abs(row["rewards/chosen"]) > 1e-3 and row["loss_sigmoid"] != pytest.approx(LN2, abs=1e-4)


def test_killed_mpo_run_resumes_with_the_same_losses(tmp_path, meta):
    out = tmp_path / "killed"
    args = ["--model", "tiny-random", "--tokenizer", "byte", "--method", "mpo", "--max-dynamic-patch", "1",
            "--no-progress", "--per-device-batch-size", "2", "--lr", "1e-3", "--drop-path-rate", "0.2",
            "--meta-path", str(meta), "--max-steps", "12", "--save-steps", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "internvl", "train", *args, "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while len(read_metrics(out / "metrics.jsonl")) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup of any kind runs
    finally:
        _, err = proc.communicate()
    assert proc.returncode == -9, err.decode()[-2000:]
    killed_at = len(read_metrics(out / "metrics.jsonl"))
    assert 4 <= killed_at < 12
    assert main(["train", *args, "--output-dir", str(out), "--resume"]) == 0
    assert main(["train", *args, "--output-dir", str(tmp_path / "whole")]) == 0
    resumed, whole = rows(out), rows(tmp_path / "whole")
    assert find_latest(out).name == "checkpoint-12" and len(resumed) == len(whole) == 12
    for key in ("loss", "bco_delta"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in whole], abs=1e-6), key


def test_lora_mpo_merges_to_the_same_logits(tmp_path, meta):
    cfg = TrainConfig(**BASE, meta_path=str(meta), output_dir=str(tmp_path / "lora"), max_steps=3, lr=5e-3,
                      use_llm_lora=4, use_backbone_lora=2, lora_dropout=0.0)
    model, tok, _, specs = prepare_model(cfg, None)
    info = DistInfo()
    loader, _, steps = build_loader(cfg, model, tok, info, 0)
    objective = build_objective(cfg, info, SFTInternVL, loader.dataset, loader.collate_fn, False)
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay)
    ctx = StepContext(info, [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm, cfg.bf16,
                      objective)
    model.train()
    for batch in loader:
        stats = train_step(model, [batch], opt, cosine_schedule(opt, steps, 0.0), ctx)
    assert float(stats["objective"]["margins"]) != 0
    model.eval()
    merged = plain_model(model.config, merged_state_dict(model.state_dict(), specs)).eval()
    merged.img_context_token_id = model.img_context_token_id
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (2, 40), generator=g)
    ids[:, 3:3 + model.num_image_token] = model.img_context_token_id
    pixel_values = torch.randn(2, 3, 112, 112, generator=g)
    with torch.no_grad():
        want = InternVL.forward(model, ids, pixel_values).logits
        torch.testing.assert_close(InternVL.forward(merged, ids, pixel_values).logits, want, atol=1e-5, rtol=1e-5)
    # and through the CLI: the run's checkpoint, merged again from its adapter, is the same weights
    train(cfg)
    ckpt = tmp_path / "lora" / "checkpoint-3"
    assert main(["merge-lora", "--adapter", str(ckpt / "adapter"), "--output", str(tmp_path / "merged")]) == 0
    saved, rebuilt = load_file(ckpt / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    assert saved.keys() == rebuilt.keys() and all(torch.equal(saved[k], rebuilt[k]) for k in saved)


# one torchrun launch runs several trainings in the same two processes (process start-up dominates otherwise)
WORKER = """
import json, sys
import torch
import torch.distributed as dist
from internvl.train.args import TrainConfig
from internvl.train.trainer import train
torch.set_num_threads(1)
dist.init_process_group("gloo")
for cfg in json.loads(open(sys.argv[1]).read()):
    train(TrainConfig(**cfg))
dist.destroy_process_group()
"""


def test_two_processes_match_one(tmp_path):
    """FSDP2 and DDP (+ LoRA, + a reference precomputed in shares) on 2 CPU processes give the losses, rewards and
    delta of one process with the same global batch. Chosen responses have equal lengths, so the per-rank token means
    of the SFT term average to the one-process token mean; some micro-batches are text-only (the blank-tile path of
    both the policy and the sharded reference)."""
    meta = make_pairs(tmp_path / "data", n=8, text_every=2, equal_chosen_lengths=True)
    common = {**BASE, "meta_path": str(meta), "max_steps": 3, "lr": 2e-3, "max_dynamic_patch": 2}
    lora = dict(use_llm_lora=4, lora_dropout=0.0, freeze_backbone=True)
    runs = [{**common, "output_dir": str(tmp_path / "fsdp"), "parallel": "fsdp"},
            {**common, **lora, "output_dir": str(tmp_path / "ddp"), "parallel": "ddp", "precompute_ref": True}]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    (tmp_path / "worker.py").write_text(WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(tmp_path / "worker.py"), str(tmp_path / "runs.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(TrainConfig(**{**common, "per_device_batch_size": 4, "output_dir": str(tmp_path / "one")}))
    train(TrainConfig(**{**common, **lora, "per_device_batch_size": 4, "output_dir": str(tmp_path / "one_lora")}))
    for many, one in (("fsdp", "one"), ("ddp", "one_lora")):
        a, b = rows(tmp_path / many), rows(tmp_path / one)
        assert len(a) == len(b) == 3 and all(r["samples"] == 4 for r in a)
        for key in ("loss", "loss_sft", "rewards/margins", "bco_delta"):
            assert [r[key] for r in a] == pytest.approx([r[key] for r in b], abs=1e-5), (many, key)
        # step 1 has policy = reference: its rewards are rounding noise (a precomputed reference ran other batch
        # shapes), so which one is larger is not defined there
        assert [r["rewards/accuracies"] for r in a[1:]] == [r["rewards/accuracies"] for r in b[1:]]
    assert rows(tmp_path / "one")[-1]["rewards/margins"] != 0


def test_bad_settings_are_one_line_errors(tmp_path, meta, capsys):
    common = ["train", "--model", "tiny-random", "--tokenizer", "byte", "--meta-path", str(meta), "--output-dir",
              str(tmp_path / "x"), "--method", "mpo"]
    assert main([*common, "--loss-type", "sigmoid,dpo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown loss type") and "\n" not in err
    assert main([*common, "--loss-weights", "1"]) == 2
    assert "1 value(s) for 2 loss type(s)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--method must be one of"):
        TrainConfig(model="m", meta_path="m", output_dir="o", method="dpo")


def test_resuming_with_another_method_is_refused(tmp_path, meta):
    out = tmp_path / "run"
    train(TrainConfig(**BASE, meta_path=str(meta), output_dir=str(out), max_steps=1))
    with pytest.raises(ConfigError, match="--method mpo, this run asks for --method sft"):
        train(TrainConfig(**{**BASE, "method": "sft"}, meta_path=str(meta), output_dir=str(out), max_steps=2,
                          resume=True))
