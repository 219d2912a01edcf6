"""Interrupted runs: a run stopped (or really killed) mid-way and resumed logs the same losses as one that never
stopped; a crash while a checkpoint is being written leaves the previous checkpoint loadable and nothing
half-written that a resume would pick up."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from synthetic import make_dataset

from internvl.chat import from_pretrained
from internvl.train import state as state_mod
from internvl.train.args import TrainConfig
from internvl.train.metrics import read_metrics
from internvl.train.state import find_latest, list_checkpoints
from internvl.train.trainer import train

# every source of randomness a resume must restore: LoRA dropout, ViT drop path, data order across epochs
# (16 samples, 8 per step: a new epoch every 2 steps), packing and accumulation
BASE = dict(model="tiny-random", tokenizer="byte", lr=1e-3, max_dynamic_patch=2, progress=False, save_steps=0,
            per_device_batch_size=4, gradient_accumulation_steps=2, packed=True, max_packed_tokens=520,
            drop_path_rate=0.2, warmup_ratio=0.2)
VARIANTS = {"full": {}, "lora": dict(use_llm_lora=4, use_backbone_lora=2, lora_dropout=0.1)}
CLI = ["--model", "tiny-random", "--tokenizer", "byte", "--lr", "1e-3", "--max-dynamic-patch", "2", "--no-progress",
       "--per-device-batch-size", "4", "--drop-path-rate", "0.2"]


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=16)


def losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stopped_and_resumed_run_repeats_the_losses_exactly(variant, tmp_path, meta):
    kw = {**BASE, **VARIANTS[variant], "meta_path": str(meta), "max_steps": 7}
    train(TrainConfig(output_dir=str(tmp_path / "whole"), **kw))
    first = train(TrainConfig(output_dir=str(tmp_path / "split"), max_steps_this_run=3, **kw))
    assert first["end_step"] == 3 and find_latest(tmp_path / "split").name == "checkpoint-3"
    second = train(TrainConfig(output_dir=str(tmp_path / "split"), resume=True, **kw))
    assert second["start_step"] == 3 and len(second["losses"]) == 4
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert len(whole) == 7 and split == whole  # bit-identical, not merely close
    assert len(set(whole)) == 7  # anti-vacuity: the losses move


def reference(tmp_path, meta, steps: int, save_steps: int) -> list[float]:
    out = tmp_path / "reference"
    train(TrainConfig(model="tiny-random", tokenizer="byte", lr=1e-3, max_dynamic_patch=2, progress=False,
                      per_device_batch_size=4, drop_path_rate=0.2, meta_path=str(meta), output_dir=str(out),
                      max_steps=steps, save_steps=save_steps))
    return losses(out)


def test_killed_subprocess_resumes_with_the_same_losses(tmp_path, meta):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "internvl", "train", *CLI, "--meta-path", str(meta), "--output-dir", str(out),
           "--max-steps", "40", "--save-steps", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(out / "metrics.jsonl")) < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup of any kind runs
    finally:
        _, err = proc.communicate()
    assert proc.returncode == -9, err.decode()[-2000:]
    killed_at = len(read_metrics(out / "metrics.jsonl"))
    assert 6 <= killed_at < 40
    resumed = train(TrainConfig(model="tiny-random", tokenizer="byte", lr=1e-3, max_dynamic_patch=2, progress=False,
                                per_device_batch_size=4, drop_path_rate=0.2, meta_path=str(meta),
                                output_dir=str(out), max_steps=40, save_steps=4, resume=True))
    assert 4 <= resumed["start_step"] <= killed_at and resumed["start_step"] % 4 == 0
    assert losses(out) == pytest.approx(reference(tmp_path, meta, 40, 4), abs=1e-6)


# dies inside the second checkpoint's save, half-way through writing optimizer.pt (torch.save's 3rd call)
DIE_IN_SAVE = """
import os, sys, torch
real, calls = torch.save, [0]
def dying_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:
        with open(f, "wb") as fh:
            fh.write(b"half an optimizer")
        os._exit(9)
    return real(obj, f, *args, **kwargs)
torch.save = dying_save
from internvl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path, meta):
    out = tmp_path / "dies"
    args = [*CLI, "--meta-path", str(meta), "--output-dir", str(out), "--max-steps", "9", "--save-steps", "3"]
    proc = subprocess.run([sys.executable, "-c", DIE_IN_SAVE, "train", *args], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert any(name.startswith(".checkpoint-6") for name in hidden)  # the crash really hit the second save
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3"]  # nothing half-written is listed
    assert find_latest(out).name == "checkpoint-3"
    from_pretrained(out / "checkpoint-3")  # the previous checkpoint still loads
    result = train(TrainConfig(model="tiny-random", tokenizer="byte", lr=1e-3, max_dynamic_patch=2, progress=False,
                               per_device_batch_size=4, drop_path_rate=0.2, meta_path=str(meta),
                               output_dir=str(out), max_steps=9, save_steps=3, resume=True))
    assert result["start_step"] == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint")]  # leftovers cleaned
    assert losses(out) == pytest.approx(reference(tmp_path, meta, 9, 3), abs=1e-6)


def test_exception_during_save_keeps_the_previous_checkpoint(tmp_path, meta, monkeypatch):
    out = tmp_path / "raises"
    kw = dict(model="tiny-random", tokenizer="byte", lr=1e-3, max_dynamic_patch=1, progress=False,
              per_device_batch_size=4, meta_path=str(meta), output_dir=str(out), max_steps=4, save_steps=2)
    real, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(state_mod.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        train(TrainConfig(**kw))
    assert sorted(os.listdir(out)) == ["checkpoint-2", "latest", "metrics.jsonl"]  # staging removed, no partial dir
    assert find_latest(out).name == "checkpoint-2"
    monkeypatch.undo()
    assert train(TrainConfig(resume=True, **kw))["start_step"] == 2


def test_latest_pointing_nowhere_falls_back_to_the_newest_complete_checkpoint(tmp_path, meta):
    out = tmp_path / "ptr"
    train(TrainConfig(model="tiny-random", tokenizer="byte", max_dynamic_patch=1, progress=False,
                      per_device_batch_size=4, meta_path=str(meta), output_dir=str(out), max_steps=2, save_steps=1))
    (out / "latest").write_text("checkpoint-99\n")
    (out / "checkpoint-7").mkdir()  # a stray directory without trainer_state/state.json is never complete
    assert find_latest(out).name == "checkpoint-2"
