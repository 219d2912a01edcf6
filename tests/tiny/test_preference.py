"""The preference-data engine: answers sampled from the shipped tiny model through the engine (reproducible by seed,
really sampled), labelled by the world's truth; questions always right or always wrong are skipped and counted; the
written pairs are MMPR lines that `PreferenceDataset` reads; `make tiny-mpo`'s report compares the two evaluations."""

from __future__ import annotations

import json
import subprocess

import pytest

from internvl.chat import from_pretrained
from internvl.engine.sampling import SamplingParams
from internvl.errors import ConfigError
from internvl.tiny import DEFAULT_MODEL, mpo_recipe
from internvl.tiny.preference import PreferenceConfig, build, make_pairs, sample_answers
from internvl.tiny.world import QUESTION_TYPES, examples, make_example
from internvl.train.data import DataConfig
from internvl.train.mpo_data import PreferenceDataset


@pytest.fixture(scope="module")
def tiny():
    return from_pretrained(DEFAULT_MODEL)


def test_make_pairs_labels_by_the_truth_and_skips_questions_without_contrast():
    example = make_example(2)  # count_all
    right, wrong = example.answer, str(int(example.answer) + 1)
    other = str(int(example.answer) + 2)
    pairs, outcome = make_pairs(example, [wrong, right, other, wrong, right + ".", right, ""], limit=3)
    assert outcome == "contrast" and pairs == [(right, wrong), (right, other)]  # likeliest mistake first
    assert make_pairs(example, [right, right + "!"], 2) == ([], "always_right")
    assert make_pairs(example, [wrong, "", other], 2) == ([], "always_wrong")
    assert make_pairs(example, [right, wrong, other], 1)[0] == [(right, wrong)]


def test_sampling_is_reproducible_and_really_samples(tiny):
    model, tok = tiny
    questions = examples("train", 14, 0)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    first = sample_answers(model, tok, questions, 4, params, seed=0, batch_size=16)
    again = sample_answers(model, tok, questions, 4, params, seed=0, batch_size=5)  # other batching, same answers
    assert first == again and len(first) == 14 and all(len(a) == 4 for a in first)
    assert any(len(set(a)) > 1 for a in first)  # temperature 1: not every question gets one answer
    other = sample_answers(model, tok, questions, 4, params, seed=1, batch_size=16)
    assert other != first


def test_build_writes_mmpr_pairs_the_mpo_dataset_reads(tiny, tmp_path):
    model, tok = tiny
    cfg = PreferenceConfig(out=str(tmp_path / "pairs"), n=21, k=6, pairs_per_question=2, batch_size=32)
    summary = build(cfg, model, tok)
    per_type = summary["per_type"]
    assert set(per_type) == set(QUESTION_TYPES) and all(v["questions"] == 3 for v in per_type.values())
    assert summary["contrast"] + summary["always_right"] + summary["always_wrong"] == 21
    assert summary["contrast"] > 0 and summary["contrast"] <= summary["pairs"] <= 2 * summary["contrast"]
    lines = [json.loads(line) for line in (tmp_path / "pairs" / "shapes_pairs.jsonl").read_text().splitlines()]
    assert len(lines) == summary["pairs"]
    for line in lines:
        seed = int(line["id"].split("-")[1])
        truth = make_example(seed)
        assert line["question"] == truth.prompt and line["chosen"].split()[0].strip(".").lower() == truth.answer
        assert line["rejected"].split()[0].strip(".").lower() != truth.answer
        images = line["image"] if isinstance(line["image"], list) else [line["image"]]
        assert len(images) == len(truth.scenes) and all((tmp_path / "pairs" / "images" / i).exists() for i in images)
    ds = PreferenceDataset(tmp_path / "pairs" / "shapes_pairs_meta.json", tok, DataConfig.from_model(model.config))
    pair = ds[0]
    assert pair.chosen.pixel_values is not None and pair.chosen.pixel_values is pair.rejected.pixel_values


def test_bad_settings_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        PreferenceConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="k >= 2"):
        PreferenceConfig(k=1)


def test_report_compares_the_evaluations_and_checks_the_targets(tmp_path):
    def summary(acc: dict) -> dict:
        per = {t: {"n": 10, "accuracy": a} for t, a in acc.items()}
        return {"n": 70, "accuracy": sum(acc.values()) / 7, "per_category": per}
    before = {t: 0.5 for t in QUESTION_TYPES}
    after = {**before, "count_all": 0.9, "exists": 0.7, "compare": 0.49}
    for name, acc in (("eval-sft", before), ("eval-mpo", after)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary(acc)))
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "summary.json").write_text(json.dumps({"pairs": 40, "questions": 70, "always_right": 20,
                                                                 "always_wrong": 5}))
    record = {"model": "m", "eval-sft": {"command": "e", "seconds": 30.0, "cpu_seconds": 50.0},
              "pairs": {"command": "p", "seconds": 60.0, "cpu_seconds": 100.0},
              "mpo": {"command": "t", "seconds": 600.0, "cpu_seconds": 1100.0},
              "eval-mpo": {"command": "e", "seconds": 30.0, "cpu_seconds": 50.0}}
    out = mpo_recipe.report(tmp_path, record)
    assert out["gain"] == pytest.approx((0.4 + 0.2 - 0.01) / 7)
    assert out["worst_type_change"] == pytest.approx(-0.01) and out["minutes"] == 12.0
    assert out["targets"] == {"gain >= 5 points": True, "no type down > 2 points": True, "under 30 minutes": True}
    md = (tmp_path / "report.md").read_text()
    assert "| count_all | 10 | 50.0% | 90.0% | +40.0 |" in md and "| compare | 10 | 50.0% | 49.0% | -1.0 |" in md
    assert "**+8.4**" in md


def test_make_tiny_mpo_runs_cli_commands_on_the_given_model_and_resumes(tmp_path, monkeypatch):
    """The recipe's steps are CLI commands on `--model`; finished steps are skipped, an interrupted MPO run resumes,
    and a work directory of another model is refused."""
    ran = []

    def fake_run(command):  # each step "runs" by leaving its result behind
        ran.append(command)
        if "eval" in command:
            out = command[command.index("--out") + 1]
            (tmp_path / out).mkdir(parents=True, exist_ok=True)
            (tmp_path / out / "summary.json").write_text(json.dumps({"n": 70, "accuracy": 0.5, "per_category": {
                t: {"n": 10, "accuracy": 0.5} for t in QUESTION_TYPES}}))
        elif "internvl.tiny.preference" in command:
            out = tmp_path / command[command.index("--out") + 1]
            out.mkdir(parents=True)
            (out / "shapes_pairs_meta.json").write_text(json.dumps({"shapes_pairs": {"length": 40}}))
            (out / "summary.json").write_text(json.dumps({"pairs": 40, "questions": 70, "always_right": 2,
                                                          "always_wrong": 1}))
        elif "--resume" not in command:  # the first MPO run is killed after its first checkpoint
            (tmp_path / command[command.index("--output-dir") + 1] / "checkpoint-3").mkdir(parents=True)
            return subprocess.CompletedProcess(command, -9)
        else:
            steps = command[command.index("--max-steps") + 1]
            final = tmp_path / command[command.index("--output-dir") + 1] / f"checkpoint-{steps}"
            final.mkdir(parents=True)
            (final / "config.json").write_text("{}")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(SystemExit, match=r"\[mpo\] failed \(exit -9\)"):
        mpo_recipe.run("some/model", tmp_path / "w")
    names = [c[3] if c[1] == "-m" and c[2] == "internvl" else c[2] for c in ran]
    assert names == ["eval", "internvl.tiny.preference", "train"]
    train_cmd = ran[2]
    assert train_cmd[train_cmd.index("--method") + 1] == "mpo" and train_cmd[train_cmd.index("--model") + 1] == "some/model"
    assert "--precompute-ref" in train_cmd and ran[0][ran[0].index("--model") + 1] == "some/model"
    steps = mpo_recipe.mpo_steps(tmp_path / "w" / "pairs" / "shapes_pairs_meta.json")
    assert train_cmd[train_cmd.index("--max-steps") + 1] == str(steps) == str(-(-mpo_recipe.EPOCHS * 40 // mpo_recipe.BATCH))
    ran.clear()
    summary = mpo_recipe.run("some/model", tmp_path / "w")
    assert [c[3] for c in ran] == ["train", "eval"] and "--resume" in ran[0]  # pairs and baseline not redone
    assert ran[1][ran[1].index("--model") + 1].endswith(f"mpo/checkpoint-{steps}")
    assert summary["gain"] == 0 and (tmp_path / "w" / "report.md").exists()
    with pytest.raises(SystemExit, match="holds a run on some/model"):
        mpo_recipe.run("other/model", tmp_path / "w")
