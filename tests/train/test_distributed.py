"""Two CPU processes (torchrun, gloo): FSDP2 and DDP give the losses of one process with the same global batch
(fp32, atol 1e-5: only the order of the sums differs), an FSDP2 run saves and resumes, rank 0 alone writes. And the
sharded sampler: ranks split exactly the global batch, positions depend only on the step."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from synthetic import make_dataset

from internvl.errors import ConfigError
from internvl.train.args import TrainConfig
from internvl.train.distributed import DistInfo, StepBatchSampler
from internvl.train.metrics import read_metrics
from internvl.train.state import find_latest
from internvl.train.trainer import train

COMMON = dict(model="tiny-random", tokenizer="byte", lr=1e-3, max_dynamic_patch=2, progress=False, save_steps=0,
              max_steps=4)
LORA = dict(use_llm_lora=4, lora_dropout=0.0, freeze_backbone=True)
PACKED = dict(packed=True, max_packed_tokens=520)  # two ~250-token samples per row

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


def test_sampler_ranks_split_the_global_batch():
    one = StepBatchSampler(20, micro_batch=4, accumulation=1, info=DistInfo(), seed=3, max_steps=8)
    two = [StepBatchSampler(20, 2, 1, DistInfo(rank=r, world_size=2), seed=3, max_steps=8) for r in (0, 1)]
    accum = StepBatchSampler(20, 2, 2, DistInfo(), seed=3, max_steps=8)
    steps_one = list(one)
    assert one.steps_per_epoch == 5 and len(steps_one) == 8
    rank0, rank1 = list(two[0]), list(two[1])
    acc = list(accum)
    for s, batch in enumerate(steps_one):
        assert sorted(batch) == sorted(rank0[s] + rank1[s]) == sorted(acc[2 * s] + acc[2 * s + 1])
    assert sorted(sum(steps_one[:5], [])) == list(range(20))  # one epoch sees every sample once
    assert steps_one[:5] != steps_one[5:8] + steps_one[:2]  # a new order each epoch
    resumed = StepBatchSampler(20, 4, 1, DistInfo(), seed=3, start_step=6, max_steps=8)
    assert list(resumed) == steps_one[6:] and resumed.position(6) == (1, 4)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        StepBatchSampler(3, 2, 1, DistInfo(rank=0, world_size=2), seed=0)


def text_only_micro_batch(meta, micro: int) -> bool:
    """Whether some rank gets a micro-batch without images in the first steps (exercises the blank-tile path)."""
    records = [json.loads(line) for line in open(json.loads(meta.read_text())["shapes"]["annotation"])]
    for r in (0, 1):
        for batch in StepBatchSampler(len(records), micro, 1, DistInfo(r, 2), seed=0, max_steps=4):
            if all("image" not in records[i] for i in batch):
                return True
    return False


def test_two_processes_match_one(tmp_path):
    meta = make_dataset(tmp_path / "data", n=16, text_every=2)
    assert text_only_micro_batch(meta, micro=2)
    runs = [
        {**COMMON, **PACKED, "meta_path": str(meta), "output_dir": str(tmp_path / "fsdp"), "per_device_batch_size": 2,
         "parallel": "fsdp", "max_steps_this_run": 2},
        {**COMMON, **PACKED, "meta_path": str(meta), "output_dir": str(tmp_path / "fsdp"), "per_device_batch_size": 2,
         "parallel": "fsdp", "resume": True},
        {**COMMON, **LORA, "meta_path": str(meta), "output_dir": str(tmp_path / "ddp"), "per_device_batch_size": 2,
         "parallel": "ddp"},
    ]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    (tmp_path / "worker.py").write_text(WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(tmp_path / "worker.py"), str(tmp_path / "runs.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(TrainConfig(**{**COMMON, "meta_path": str(meta), "output_dir": str(tmp_path / "one"),
                         "per_device_batch_size": 4}))
    train(TrainConfig(**{**COMMON, **LORA, "meta_path": str(meta), "output_dir": str(tmp_path / "one_lora"),
                         "per_device_batch_size": 4}))

    def losses(name):
        return [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")]

    one, one_lora = losses("one"), losses("one_lora")
    assert len(one) == 4 and one[-1] < one[0]
    assert losses("fsdp") == pytest.approx(one, abs=1e-5)  # FSDP2, packed, stopped after 2 steps and resumed
    assert losses("ddp") == pytest.approx(one_lora, abs=1e-5)  # DDP with LoRA on the LLM
    assert find_latest(tmp_path / "fsdp").name == "checkpoint-4"
    state = json.loads((tmp_path / "fsdp" / "checkpoint-4" / "trainer_state" / "state.json").read_text())
    assert state["world_size"] == 2 and state["global_batch"] == 4
    rows = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["samples"] == 4 for r in rows)  # rank 0 alone writes

    # the 2-process FSDP checkpoint resumes in one process (states are saved whole, keyed by name)
    more = train(TrainConfig(**{**COMMON, "meta_path": str(meta), "output_dir": str(tmp_path / "fsdp"),
                                "per_device_batch_size": 4, "max_steps": 6, "resume": True}))
    assert more["start_step"] == 4 and len(more["losses"]) == 2 and np.isfinite(more["losses"]).all()
