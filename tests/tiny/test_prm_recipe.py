"""`make tiny-prm`'s plan (CLI commands only, parametrised by the policy, done steps skipped, interrupted
training resumed) and its ship step (bf16 official-layout PRM with VisualPRM's system prompt, a model card
written from the measured numbers, the accuracy-vs-N chart)."""

from __future__ import annotations

import json

import torch
from PIL import Image
from safetensors import safe_open

from internvl.checkpoint.loader import save_checkpoint
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.tiny import prm_recipe
from internvl.tiny.prm_ship import ship
from internvl.tiny.tokenizer import save_tokenizer
from internvl.tts.prm import PRM_SYSTEM_PROMPT


def test_plan_fine_tunes_the_policy_then_trains_the_prm_from_it(tmp_path):
    steps = prm_recipe.plan(tmp_path, "my/policy", policy_steps=150, prm_steps=200)
    assert [name for name, _, _ in steps] == ["steps-data", "policy", "prm-data", "prm-tokenizer", "prm", "eval"]
    assert not any(done for _, _, done in steps)
    cmd = {name: c for name, c, _ in steps}
    for run in ("policy", "prm"):
        assert cmd[run][1:4] == ["-m", "internvl", "train"] and "--resume" not in cmd[run]
    assert cmd["policy"][cmd["policy"].index("--model") + 1] == "my/policy"
    policy = str(tmp_path / "policy" / "checkpoint-150")
    assert cmd["prm-data"][cmd["prm-data"].index("--policy") + 1] == policy
    assert cmd["prm"][cmd["prm"].index("--model") + 1] == policy  # the PRM starts from the policy's weights
    assert cmd["prm-tokenizer"][cmd["prm-tokenizer"].index("--tokenizer") + 1] == policy
    assert cmd["prm"][cmd["prm"].index("--tokenizer") + 1] == str(tmp_path / "prm-tokenizer")
    assert cmd["prm"][cmd["prm"].index("--meta-path") + 1] == str(tmp_path / "prm-data" / "prm_meta.json")
    ev = cmd["eval"]
    assert ev[1:5] == ["-m", "internvl", "eval", "shapes"] and "--step-by-step" in ev
    assert ev[ev.index("--best-of") + 1] == "16" and ev[ev.index("--n") + 1] == "500"
    assert ev[ev.index("--prm") + 1] == str(tmp_path / "prm" / "checkpoint-200")
    assert ev[ev.index("--model") + 1] == policy

    (tmp_path / "steps-data").mkdir()
    (tmp_path / "steps-data" / "shapes_steps_meta.json").write_text("{}")
    (tmp_path / "policy" / "checkpoint-50").mkdir(parents=True)  # interrupted after a save
    steps = {name: (c, done) for name, c, done in prm_recipe.plan(tmp_path, "my/policy", policy_steps=150)}
    assert steps["steps-data"][1] and not steps["policy"][1] and "--resume" in steps["policy"][0]


def test_plan_for_a_policy_that_already_answers_step_by_step(tmp_path):
    steps = prm_recipe.plan(tmp_path, "new/tiny", policy_steps=0)
    assert [name for name, _, _ in steps] == ["prm-data", "prm-tokenizer", "prm", "eval"]
    cmd = {name: c for name, c, _ in steps}
    assert cmd["prm-data"][cmd["prm-data"].index("--policy") + 1] == "new/tiny"
    assert cmd["prm"][cmd["prm"].index("--model") + 1] == "new/tiny"


def test_ship_writes_the_prm_its_card_and_chart(tmp_path):
    torch.manual_seed(0)
    model = InternVL(PRESETS["tiny"].config)
    model.init_weights()
    checkpoint = save_checkpoint(model, tmp_path / "prm" / "checkpoint-200", "official")
    save_tokenizer(checkpoint)
    (tmp_path / "eval").mkdir()
    Image.new("RGB", (20, 10), "white").save(tmp_path / "eval" / "best_of_n.png")
    cats = {"count_all": {"n": 10, "greedy": 0.5, "prm": 0.7, "orm": 0.6, "majority": 0.6}}
    summary = {"model": "scratch/policy", "best_of": 16, "per_category": cats,
               "curve": {"n": [1, 2, 4, 8, 16], "prm": [0.6, 0.62, 0.64, 0.66, 0.68], "orm": [0.6] * 5,
                         "majority": [0.6, 0.6, 0.61, 0.62, 0.63], "pass": [0.6, 0.7, 0.8, 0.85, 0.9]}}
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "prm-data").mkdir()
    stats = {"questions": 600, "responses": 4, "words": 2, "mc": 4, "records": 3600, "steps": 9000,
             "plus_share": 0.71, "step_response_accuracy": 0.55}
    (tmp_path / "prm-data" / "stats.json").write_text(json.dumps(stats))
    record = {"prm": {"command": "python -m internvl train --model x", "seconds": 600.0}}
    out = ship(checkpoint, tmp_path / "shipped", record, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"] and config["system_message"] == PRM_SYSTEM_PROMPT
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert (out / "tokenizer.json").exists() and (out / "best_of_n.png").exists()
    card = (out / "README.md").read_text()
    assert "| 16 | 68.0% | 60.0% | 63.0% | 90.0% |" in card
    assert "| count_all | 10 | 50.0% | 70.0% | 60.0% |" in card
    assert "+8.0 points" in card and "71.0% `+`" in card and "python -m internvl train --model x    # 600 s" in card
    assert "At N = 8: PRM 66.0%, majority 62.0%, greedy 60.0%; the target" in card and "is met." in card


def test_stop_after_names_a_step(tmp_path):
    import pytest

    from internvl.errors import ConfigError
    with pytest.raises(ConfigError, match="not a step"):
        prm_recipe.run(tmp_path, tmp_path / "out", "p", stop_after="nope")
