"""`make tiny-flash`: every step is a command the real CLI parsers accept, finished steps are skipped, an
interrupted training resumes, and the report compares tokens and accuracy against the targets."""

from __future__ import annotations

import json

import pytest

from internvl.cli import build_parser
from internvl.tiny import flash_recipe
from internvl.train.args import TrainConfig


def _parse(command: list[str]):
    assert command[1:3] == ["-m", "internvl"]
    return build_parser().parse_args(command[3:])


def test_plan_is_cli_commands_that_parse_and_resume(tmp_path):
    steps = flash_recipe.plan("M", tmp_path, data_n=64, eval_n=20, consistency_steps=6, router_steps=4)
    assert [n for n, _, _ in steps] == ["data", "eval-base", "consistency", "router", "eval-auto", "eval-off"]
    assert not any(done for _, _, done in steps)
    cmds = {n: c for n, c, _ in steps}
    for name in ("consistency", "router"):
        args = _parse(cmds[name])
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
        assert cfg.vico == name and not cfg.resume
    consistency, router = _parse(cmds["consistency"]), _parse(cmds["router"])
    assert consistency.model == "M" and consistency.max_steps == 6 and consistency.vico_mixed_prob == 0.5
    assert "--describe" in cmds["data"]  # descriptions name every object: what the compressed branch must keep
    assert router.model.endswith("consistency/checkpoint-6") and router.vico_reference == "M"
    assert router.max_steps == 4 and router.flash_absolute_threshold == 0.42
    for name, vir, model in (("eval-base", "off", "M"), ("eval-auto", "auto", "router/checkpoint-4"),
                             ("eval-off", "off", "router/checkpoint-4")):
        args = _parse(cmds[name])
        assert args.vir == vir and args.n == 20 and args.model.endswith(model) and not args.blind

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shapes_train_meta.json").write_text("{}")
    (tmp_path / "consistency" / "checkpoint-3").mkdir(parents=True)  # interrupted after a save
    steps = {n: (c, done) for n, c, done in flash_recipe.plan("M", tmp_path, 64, 20, 6, 4)}
    assert steps["data"][1] and not steps["consistency"][1]
    assert "--resume" in steps["consistency"][0] and "--resume" not in steps["router"][0]


def test_report_measures_the_token_cut_and_the_accuracy_loss(tmp_path):
    def summary(name, accuracy, tokens, compressed):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"n": 100, "accuracy": accuracy, "visual_tokens_per_question": tokens, "seconds_per_question": 0.05,
             "tiles": 300, "compressed_tiles": compressed, "threads": 2}))

    summary("eval-base", 0.80, 64.0, 0)
    summary("eval-off", 0.79, 64.0, 0)
    summary("eval-auto", 0.785, 36.0, 140)
    record = {"model": "M", "router": {"command": "python -m internvl train --vico router", "seconds": 9.0}}
    out = flash_recipe.report(tmp_path, record)
    assert out["token_cut"] == pytest.approx(1 - 36 / 64) and out["accuracy_loss"] == pytest.approx(0.015)
    assert list(out["targets"].values()) == [True, True]
    md = (tmp_path / "report.md").read_text()
    assert "| Flash, --vir auto | 36.0 | 140 of 300 | 78.5% | 0.050 |" in md and "cut by 43.8%" in md
    (tmp_path / "eval-auto" / "summary.json").write_text(json.dumps(
        {"n": 100, "accuracy": 0.7, "visual_tokens_per_question": 50.0, "seconds_per_question": 0.05,
         "tiles": 300, "compressed_tiles": 60, "threads": 2}))
    out = flash_recipe.report(tmp_path, record)
    assert list(out["targets"].values()) == [False, False]
    assert "NOT met" in (tmp_path / "report.md").read_text()


def test_empty_tile_bound_counts_the_tiles_the_model_reads():
    """The bound's tile and token counts equal what the real preprocessing gives the same questions, and a
    tile counts as empty exactly when no object's box reaches into it."""
    from internvl.checkpoint.loader import read_config
    from internvl.processing.image import load_question_images
    from internvl.tiny import DEFAULT_MODEL
    from internvl.tiny.world import examples

    config = read_config(DEFAULT_MODEL)[0]
    n = 40
    bound = flash_recipe.empty_tile_bound(config, n)
    tiles = sum(t.shape[0] for ex in examples("heldout", n) for t in load_question_images(ex.images(), config))
    assert bound["tiles"] == tiles and bound["visual_tokens"] == tiles * config.num_image_token / n
    assert 0 < bound["empty_tiles"] < tiles
    saved = config.num_image_token - config.num_image_token_compressed
    assert bound["token_cut"] == bound["empty_tiles"] * saved / (tiles * config.num_image_token)
    # the same count from pixels: a tile of the rendered image whose every pixel is background
    empty = 0
    for ex in examples("heldout", n):
        for scene in ex.scenes:
            t = load_question_images([scene.render()], config,
                                     max_tiles=config.max_dynamic_patch // len(ex.scenes))[0]
            if t.shape[0] > 1:
                grid = t[:-1]  # the thumbnail is never counted
                spread = (grid.amax(dim=(2, 3)) - grid.amin(dim=(2, 3))).amax(dim=1)  # per tile, any channel
                empty += int((spread < 0.05).sum())
    # a box-empty tile is pixel-empty; a few tiles hold only a box's corner (of a circle or a triangle)
    # and no object pixel, so pixels find slightly more
    assert bound["empty_tiles"] <= empty <= bound["empty_tiles"] + 0.03 * tiles
