"""The evaluation runner end to end on a random `tiny` model (accuracy is near chance): batched generation
through the engine, files written, per-type table, blind baseline; the task registry; the CLI command."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from internvl.checkpoint.loader import save_checkpoint
from internvl.cli import main
from internvl.errors import ConfigError
from internvl.eval import runner, tasks
from internvl.eval.metrics import first_word_match
from internvl.eval.report import format_table
from internvl.eval.shapes import ShapesTask
from internvl.eval.tasks import Sample, get_task
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.processing.image import load_image
from internvl.tiny.tokenizer import train_tokenizer
from internvl.tiny.world import QUESTION_TYPES, make_example

FAST = dict(batch_size=4, max_tiles=1, max_new_tokens=3)  # one tile per image and short answers keep it quick


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = InternVL(PRESETS["tiny"].config)
    model.init_weights()
    return model.eval(), train_tokenizer()


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    model, tok = tiny
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny", "official")
    tok.save_pretrained(path)
    return path


def test_evaluate_writes_predictions_summary_and_chart(tiny, tmp_path):
    model, tok = tiny
    summary = runner.evaluate(runner.EvalConfig(n=14, seed=3, out=str(tmp_path), **FAST), model, tok)
    records = [json.loads(line) for line in open(tmp_path / "predictions.jsonl", encoding="utf-8")]
    assert [r["id"] for r in records] == [f"heldout-{10**9 + 3 + i}" for i in range(14)]
    for r in records:
        example = make_example(int(r["id"].split("-")[1]))
        assert (r["category"], r["question"], r["answer"]) == (example.qtype, example.prompt, example.answer)
        assert r["score"] == first_word_match(r["prediction"], r["answer"])
        assert r["blind_score"] == first_word_match(r["blind_prediction"], r["answer"])
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 14
    assert summary["per_category"] == {t: {"n": 2, "accuracy": summary["per_category"][t]["accuracy"]}
                                       for t in QUESTION_TYPES}
    assert summary["accuracy"] == sum(r["score"] for r in records) / 14
    assert summary["blind"]["accuracy"] == sum(r["blind_score"] for r in records) / 14
    assert summary["gain_over_blind"] == summary["accuracy"] - summary["blind"]["accuracy"]
    with Image.open(tmp_path / "accuracy.png") as chart:
        assert chart.size == (760, 360)
    table = format_table(summary)
    assert all(t in table for t in QUESTION_TYPES) and "overall" in table and "blind" in table


def test_blind_requests_carry_blank_images_of_the_same_size(tiny):
    model, tok = tiny
    samples = list(ShapesTask().examples(7, 0))
    seeing = list(runner._requests(model, tok, ShapesTask(), samples, 6, blind=False))
    blind = list(runner._requests(model, tok, ShapesTask(), samples, 6, blind=True))
    white = load_image(Image.new("RGB", (96, 96), "white"), 96)[0]
    for sample, (ids, pixels), (blind_ids, blind_pixels) in zip(samples, seeing, blind):
        assert ids == blind_ids  # same sizes -> same tiling -> the same prompt
        assert blind_pixels.shape == pixels.shape
        assert torch.equal(blind_pixels, white.expand_as(blind_pixels))
        assert not torch.equal(pixels, blind_pixels)
        config = PRESETS["tiny"].config
        assert ids.count(config.image_token_id) == pixels.shape[0] * config.num_image_token


class EchoTask:
    """A text-only task whose samples are categorized by parity, to show the registry and runner are generic."""

    name = "echo"

    def examples(self, n, seed):
        for i in range(n):
            yield Sample(id=str(i), category="even" if i % 2 == 0 else "odd", question=f"Say {i}.", answer=str(i),
                         load_images=lambda: [])

    def prompt(self, sample):
        return sample.question

    def score(self, prediction, sample):
        return first_word_match(prediction, sample.answer)


def test_registry_runs_a_new_task_and_rejects_unknown_names(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ConfigError, match="shapes"):
        get_task("no-such-task")
    tasks.register("echo", EchoTask)
    try:
        with pytest.raises(ConfigError, match="already"):
            tasks.register("echo", EchoTask)
        summary = runner.evaluate(runner.EvalConfig(task="echo", n=3, out=str(tmp_path), blind=False, **FAST),
                                  model, tok)
    finally:
        del tasks.TASKS["echo"]
    assert summary["task"] == "echo" and "blind" not in summary
    assert {c: v["n"] for c, v in summary["per_category"].items()} == {"even": 2, "odd": 1}


def test_cli_eval_prints_the_table_and_writes_files(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", "shapes", "--model", str(checkpoint), "--n", "7", "--out", str(out), "--batch-size", "4",
                 "--max-tiles", "1", "--max-new-tokens", "2", "--dtype", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert all(t in printed for t in QUESTION_TYPES) and "overall" in printed and "blind" in printed
    assert {p.name for p in out.iterdir()} == {"predictions.jsonl", "summary.json", "accuracy.png"}
    assert main(["eval", "shapes", "--model", str(checkpoint), "--n", "2", "--out", str(out), "--no-blind",
                 "--max-tiles", "1", "--max-new-tokens", "1"]) == 0
    assert "blind" not in json.loads((out / "summary.json").read_text())


def test_progress_bar_on_stderr_and_the_chart_title_keeps_its_spaces(tiny, tmp_path, capsys):
    model, tok = tiny
    runner.evaluate(runner.EvalConfig(n=7, out=str(tmp_path), blind=False, progress=True, **FAST), model, tok)
    err = capsys.readouterr().err
    assert "shapes: " in err and "/7 [" in err  # tqdm's bar (it may close before drawing 7/7: leave=False)
    runner.evaluate(runner.EvalConfig(n=7, out=str(tmp_path), blind=False, progress=False, **FAST), model, tok)
    assert "7/7" not in capsys.readouterr().err
    # Pillow's default font advances a space by ~1 px at small sizes ("accuracyon"): words are spaced by hand
    from PIL import ImageChops, ImageDraw, ImageFont

    from internvl.eval.report import _text
    font = ImageFont.load_default(size=14)

    def inked_width(text: str) -> int:
        img = Image.new("L", (400, 30), 255)  # _text inks in black, as on the chart's white background
        _text(ImageDraw.Draw(img), (0, 0), text, font)
        return ImageChops.invert(img).getbbox()[2]
    assert inked_width("held-out samples") >= inked_width("held-outsamples") + 4


def test_bad_eval_flags_exit_2(capsys):
    for flags in (["--n", "0"], ["--max-new-tokens", "-1"], ["--max-tiles", "0"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "shapes", *flags])
        assert e.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1
