"""`make tiny`'s plan (CLI commands only, done steps skipped, interrupted stages resumed) and the ship step
(bf16 official-layout copy + a model card written from the measured numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from internvl.checkpoint.loader import save_checkpoint
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.tiny import recipe
from internvl.tiny.ship import ship
from internvl.tiny.tokenizer import save_tokenizer
from internvl.tiny.world import QUESTION_TYPES


def test_plan_trains_only_through_the_cli_and_resumes(tmp_path):
    steps = recipe.plan(tmp_path)
    assert [name for name, _, _ in steps] == ["tokenizer", "data", "counting data", "stage0", "stage2", "eval"]
    assert not any(done for _, _, done in steps)
    commands = {name: cmd for name, cmd, _ in steps}
    for stage in ("stage0", "stage2"):
        assert commands[stage][1:4] == ["-m", "internvl", "train"] and "--resume" not in commands[stage]
    s0, s2 = commands["stage0"], commands["stage2"]
    assert s0[s0.index("--model") + 1] == "tiny" and s0[s0.index("--stage") + 1] == "0"
    assert s0[s0.index("--meta-path") + 1].endswith("shapes_train_ground_meta.json")
    assert s2[s2.index("--model") + 1].endswith(f"stage0/checkpoint-{recipe._steps(recipe.STAGE0)}")
    assert s2[s2.index("--meta-path") + 1].endswith("stage2_meta.json") and "--freeze-backbone" in s2
    assert "--describe" in commands["data"] and "--ground" in commands["data"]
    counting = commands["counting data"]
    assert counting[counting.index("--types") + 1] == "count_shape,compare"
    assert int(counting[counting.index("--seed") + 1]) >= recipe.TRAIN_EXAMPLES  # fresh seeds

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    (tmp_path / "stage0" / "checkpoint-100").mkdir(parents=True)  # stage 0 was interrupted after a save
    steps = {name: (cmd, done) for name, cmd, done in recipe.plan(tmp_path)}
    assert steps["tokenizer"][1] and not steps["stage0"][1]
    assert "--resume" in steps["stage0"][0] and "--resume" not in steps["stage2"][0]

    # an evaluation left by a recipe with another stage-2 length is of another checkpoint: it runs again
    (tmp_path / "eval").mkdir()
    summary = tmp_path / "eval" / "summary.json"
    summary.write_text(json.dumps({"model": str(tmp_path / "stage2" / "checkpoint-4000"), "accuracy": 0.88}))
    assert not {name: done for name, _, done in recipe.plan(tmp_path)}["eval"]
    summary.write_text(json.dumps({"model": str(recipe.final_checkpoint(tmp_path)), "accuracy": 0.9})[:20])
    assert not {name: done for name, _, done in recipe.plan(tmp_path)}["eval"]  # cut short: not done
    summary.write_text(json.dumps({"model": str(recipe.final_checkpoint(tmp_path)), "accuracy": 0.9}))
    assert {name: done for name, _, done in recipe.plan(tmp_path)}["eval"]


def test_a_failing_step_stops_the_recipe_with_its_name_and_keeps_the_record(tmp_path):
    record_path, record = tmp_path / "recipe.json", {}
    recipe.run_step("ok", [sys.executable, "-c", "pass"], False, record, record_path)
    with pytest.raises(SystemExit, match=r"\[stage2\] failed \(exit 3\)"):
        recipe.run_step("stage2", [sys.executable, "-c", "raise SystemExit(3)"], False, record, record_path)
    assert list(json.loads(record_path.read_text())) == ["ok"]  # a failed step is not recorded as done
    assert set(record["ok"]) == {"command", "seconds", "cpu_seconds"}


def test_the_record_is_replaced_whole(tmp_path, monkeypatch):
    record_path = tmp_path / "recipe.json"
    recipe.save_record({"data": {"seconds": 1.0}}, record_path)

    def killed(self, text, *a, **k):  # the process dies halfway through writing
        Path.write_bytes(self, text[: len(text) // 2].encode())
        raise KeyboardInterrupt
    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        recipe.save_record({"data": {"seconds": 1.0}, "stage0": {"seconds": 2.0}}, record_path)
    monkeypatch.undo()
    assert recipe.open_work(tmp_path)[0] == {"data": {"seconds": 1.0}}  # the last whole record


def test_a_work_directory_belongs_to_the_weights_it_started_from(tmp_path):
    model, work = tmp_path / "model", tmp_path / "work"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"take 4")
    record = {}
    recipe.claim_work(record, "policy", str(model), work)
    assert record["policy"] == str(model.resolve()) and len(record["policy_weights"]) == 16
    recipe.claim_work(record, "policy", str(model), work)  # the same weights: the run goes on
    (model / "model.safetensors").write_bytes(b"take 5")  # `make tiny` shipped new weights to the same path
    with pytest.raises(SystemExit, match=r"holds a run on .*model \(weights [0-9a-f]{16}\), not on"):
        recipe.claim_work(record, "policy", str(model), work)
    with pytest.raises(SystemExit, match=r"weights not recorded"):  # a directory from before weights were recorded
        recipe.claim_work({"policy": str(model.resolve()), "eval": {}}, "policy", str(model), work)
    with pytest.raises(SystemExit, match="holds a run on some/preset"):
        recipe.claim_work({"policy": "some/preset", "policy_weights": None}, "policy", str(model), work)


def test_prm_recipe_refuses_a_work_directory_of_other_weights_before_any_step(tmp_path, monkeypatch):
    from internvl.tiny import prm_recipe
    model, work = tmp_path / "model", tmp_path / "work"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"new weights")
    work.mkdir()
    (work / "recipe.json").write_text(json.dumps({"starting_policy": str(model.resolve()),
                                                  "starting_policy_weights": "0" * 16}))
    monkeypatch.setattr(recipe.subprocess, "run", lambda *a, **k: pytest.fail("a step ran"))
    with pytest.raises(SystemExit, match="use another --work"):
        prm_recipe.run(work, tmp_path / "out", str(model))


def test_prm_recipe_goes_on_in_its_own_work_directory(tmp_path, monkeypatch, capsys):
    """A second run over a finished step is not refused: the claim and the steps' entries (one is named
    "policy") live under different keys of the record."""
    from internvl.tiny import prm_recipe
    model, work = tmp_path / "model", tmp_path / "work"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"take 4")
    monkeypatch.setattr(recipe.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0))
    for _ in range(2):
        assert prm_recipe.run(work, tmp_path / "out", str(model), stop_after="policy") is None
    record = json.loads((work / "recipe.json").read_text())
    assert record["starting_policy"] == str(model.resolve()) and "command" in record["policy"]
    with pytest.raises(ValueError, match="also a step's name"):
        recipe.claim_work(record, "policy", str(model), work)
    with pytest.raises(ValueError, match="also a claim key"):  # the other order: the step would erase the claim
        recipe.run_step("starting_policy", [sys.executable, "-c", "pass"], False, record, work / "recipe.json")
    assert json.loads((work / "recipe.json").read_text())["starting_policy"] == str(model.resolve())


def test_stage2_meta_merges_questions_counting_and_fewer_descriptions(tmp_path):
    from internvl.tiny import dataset
    dataset.export(tmp_path, n=14, seed=0, describe=True)
    dataset.export(tmp_path, n=4, seed=14, name="shapes_counting", types=recipe.COUNTING_TYPES)
    meta = json.loads(recipe.stage2_meta(tmp_path).read_text())
    assert list(meta) == ["shapes_train", "shapes_train_describe", "shapes_counting"]
    assert meta["shapes_train_describe"]["repeat_time"] == recipe.DESCRIBE_REPEAT
    assert meta["shapes_train"]["repeat_time"] == meta["shapes_counting"]["repeat_time"] == 1
    assert dataset.type_counts(meta["shapes_counting"]["annotation"]) == {"count_shape": 2, "compare": 2}


def test_ship_writes_bf16_official_weights_and_a_model_card(tmp_path):
    torch.manual_seed(0)
    model = InternVL(PRESETS["tiny"].config)
    model.init_weights()
    checkpoint = save_checkpoint(model, tmp_path / "trained", "official")
    save_tokenizer(checkpoint)
    per_type = {t: {"n": 10, "accuracy": 0.9} for t in QUESTION_TYPES}
    summary = {"n": 70, "accuracy": 0.9, "per_category": per_type,
               "blind": {"accuracy": 0.3, "per_category": {t: {"n": 10, "accuracy": 0.3} for t in QUESTION_TYPES}}}
    record = {"stage0": {"command": "python -m internvl train --stage 0", "seconds": 60.0},
              "stage2": {"command": "python -m internvl train --stage 2", "seconds": 1200.0}}
    out = ship(checkpoint, tmp_path / "shipped", record, summary)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["InternVLChatModel"]
    assert (out / "tokenizer.json").exists()
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    card = (out / "README.md").read_text()
    assert "| **overall** | 70 | **90.0%** | 30.0% |" in card
    assert all(f"| {t} | 10 | 90.0% | 30.0% |" in card for t in QUESTION_TYPES)
    assert "python -m internvl train --stage 2    # 1200 s" in card and "21.0 minutes" in card
