"""`make tiny-flash`: a tiny InternVL3.5-Flash from a tiny checkpoint, by ViCO, measured on held-out questions.

Every step is a command a user could type (printed before it runs):

1. training data        python -m internvl.tiny.dataset --out W/data --n N   (SFT questions, as ViCO uses)
2. baseline evaluation  internvl eval shapes --model M --n E --out W/eval-base
3. consistency stage    internvl train --vico consistency --model M ...   (M gains mlp2 and a frozen router)
4. router stage         internvl train --vico router --model W/consistency/checkpoint-S --vico-reference M ...
5. evaluations          internvl eval shapes --model W/router/checkpoint-S --vir auto|off --out W/eval-auto|off
6. report               W/report.md and W/report.json: visual tokens, accuracy and seconds per question of the
                        starting model, the Flash model with its router (auto) and without it (off), and the
                        targets (at least 40% fewer visual tokens than M, at most 2 points of accuracy lost)

M is any tiny checkpoint (default: the shipped model), so the numbers re-measure on a retrained model:
`make tiny-flash TINY_FLASH_MODEL=DIR`. A finished step is skipped and an interrupted training continues with
`--resume`; `W/recipe.json` records each step's command, wall and CPU time, and the model it ran on. The step
counts are flags, so a smoke run (`--consistency-steps 2 --router-steps 2 --data-n 64 --eval-n 20`) proves the
commands in minutes.

    python -m internvl.tiny.flash_recipe [--model DIR] [--work scratch/tiny-flash]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..checkpoint.loader import read_config
from ..hardware import machine_line
from ..processing.tiling import per_image_tile_budget, target_grid
from . import DEFAULT_MODEL
from .recipe import cli as _cli
from .recipe import open_work, run_step, targets_line
from .world import examples

TOKEN_CUT, MAX_LOSS = 0.40, 0.02
COMMON = ["--bf16", "--num-workers", "1", "--seed", "0", "--save-total-limit", "1", "--no-progress",
          "--log-steps", "10", "--warmup-ratio", "0.05"]
# Consistency: every part trains but the ViT (frozen as in the tiny model's own stage 2, halving the cost); all
# pulled to the starting model's full-tile answers. Half the samples draw a rate per tile: trained on uniform
# rates only (the paper), the model read the router's mixes worse than all-compressed tiles (71.4% keeping
# only the thumbnail full against 79.0% compressing every tile, take 3 after 1200 steps); the rest compress
# all their tiles or none, half and half.
CONSISTENCY = ["--freeze-backbone", "--lr", "2e-4", "--per-device-batch-size", "16", "--vico-compress-prob", "0.5",
               "--vico-mixed-prob", "0.5"]
# Router: labels "compress" for the 60% of tiles whose compression costs least (relative to a window of
# recent tiles); at inference a tile is compressed when the router says so with probability >= 0.42, except
# the lowest-scored tile of each request (relative threshold 0, the official strict quantile rule). The
# thresholds only go into the config (training does not read them); 0.42 was chosen on held-out questions
# the report does not use (`eval shapes --seed 1000`: 0.45 / 0.42 cut 39.4 / 43.0% of the tokens for 0.4 / 1.2
# points), the report's are seed 0's.
# A small lr: Adam's first steps at 1e-3 swung the fresh router past the labels in a smoke run.
ROUTER = ["--lr", "1e-4", "--per-device-batch-size", "8", "--router-percentile", "60", "--router-window", "512",
          "--flash-relative-threshold", "0.0", "--flash-absolute-threshold", "0.42"]


def _train(model: str, out: Path, steps: int, meta: Path, extra: list[str]) -> list[str]:
    resume = ["--resume"] if out.exists() and any(out.glob("checkpoint-*")) else []
    return _cli("train", "--model", model, "--meta-path", str(meta), "--output-dir", str(out), "--max-steps",
                str(steps), "--save-steps", str(max(1, steps // 4)), *extra, *COMMON, *resume)


def plan(model: str, work: Path, data_n: int, eval_n: int, consistency_steps: int, router_steps: int
         ) -> list[tuple[str, list[str], bool]]:
    """(name, command, already done) for each step, in order."""
    data, meta = work / "data", work / "data" / "shapes_train_meta.json"
    stage1 = work / "consistency" / f"checkpoint-{consistency_steps}"
    stage2 = work / "router" / f"checkpoint-{router_steps}"

    def evaluate(name: str, checkpoint: str, vir: str) -> tuple[str, list[str], bool]:
        return (name, _cli("eval", "shapes", "--model", checkpoint, "--n", str(eval_n), "--vir", vir, "--out",
                           str(work / name), "--no-blind", "--no-progress"), (work / name / "summary.json").exists())

    return [
        # descriptions name every object: the details the compressed branch must learn to keep
        ("data", [sys.executable, "-m", "internvl.tiny.dataset", "--out", str(data), "--n", str(data_n), "--describe"],
         meta.exists()),
        evaluate("eval-base", model, "off"),
        ("consistency", _train(model, work / "consistency", consistency_steps, meta,
                               ["--vico", "consistency", *CONSISTENCY]), (stage1 / "config.json").exists()),
        ("router", _train(str(stage1), work / "router", router_steps, meta,
                          ["--vico", "router", "--vico-reference", model, *ROUTER]), (stage2 / "config.json").exists()),
        evaluate("eval-auto", str(stage2), "auto"),
        evaluate("eval-off", str(stage2), "off"),
    ]


def run(model: str, work: Path, data_n: int, eval_n: int, consistency_steps: int, router_steps: int) -> dict:
    record, record_path = open_work(work, "model", model)
    model = record["model"]
    for name, command, done in plan(model, work, data_n, eval_n, consistency_steps, router_steps):
        run_step(name, command, done, record, record_path)
    return report(work, record)


def empty_tile_bound(config, eval_n: int) -> dict:
    """What compressing exactly the tiles that hold no object would cut, on the held-out questions the
    evaluations use: the world's geometry alone, no model. A router that compresses only empty tiles loses
    nothing; every token cut beyond this bound comes from tiles with objects in them. A tile is empty when
    no object's box reaches into it (a circle's box corner can, with background pixels only: a slight
    undercount)."""
    budget = config.max_dynamic_patch if config.dynamic_image_size else 1
    full, small = config.num_image_token, config.num_image_token_compressed
    tiles = empty = 0
    for ex in examples("heldout", eval_n):
        per_image = per_image_tile_budget(budget, len(ex.scenes))  # as load_question_images tiles them
        for scene in ex.scenes:
            cols, rows = target_grid(scene.width, scene.height, min(config.min_dynamic_patch, per_image),
                                     per_image, config.image_size)
            n = cols * rows
            tiles += n + 1 if n > 1 and config.use_thumbnail else n
            if n == 1:  # one tile is never compressed
                continue
            w, h = scene.width / cols, scene.height / rows
            for c in range(cols):
                for r in range(rows):
                    x0, y0, x1, y1 = c * w, r * h, (c + 1) * w, (r + 1) * h
                    empty += not any(s.x0 < x1 and s.x0 + s.size > x0 and s.y0 < y1 and s.y0 + s.size > y0
                                     for s in scene.shapes)
    tokens = full * tiles
    return {"tiles": tiles, "empty_tiles": empty, "visual_tokens": tokens / max(1, eval_n),
            "token_cut": empty * (full - small) / max(1, tokens)}


def report(work: Path, record: dict) -> dict:
    """Compare the three evaluations; write report.json and report.md beside them."""
    rows = {}
    for name in ("eval-base", "eval-off", "eval-auto"):
        s = json.loads((work / name / "summary.json").read_text())
        rows[name] = {"accuracy": s["accuracy"], "visual_tokens": s["visual_tokens_per_question"],
                      "seconds": s["seconds_per_question"], "tiles": s["tiles"],
                      "compressed_tiles": s["compressed_tiles"], "n": s["n"], "threads": s["threads"]}
    base, auto = rows["eval-base"], rows["eval-auto"]
    cut = 1 - auto["visual_tokens"] / max(base["visual_tokens"], 1e-9)
    loss = base["accuracy"] - auto["accuracy"]
    bound = empty_tile_bound(read_config(record["model"])[0], base["n"]) if Path(record["model"]).exists() else None
    summary = {"model": record["model"], "rows": rows, "token_cut": cut, "accuracy_loss": loss,
               "empty_tile_bound": bound,
               "targets": {f">= {TOKEN_CUT:.0%} fewer visual tokens": cut >= TOKEN_CUT,
                           f"<= {100 * MAX_LOSS:.0f} points of accuracy lost": loss <= MAX_LOSS},
               "steps": {k: v for k, v in record.items() if isinstance(v, dict)}}
    (work / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    labels = {"eval-base": "starting model", "eval-off": "Flash, --vir off", "eval-auto": "Flash, --vir auto"}
    lines = [f"# A tiny InternVL3.5-Flash by ViCO: {record['model']}", "",
             f"Held-out shapes questions (`internvl eval shapes --n {base['n']}`), {machine_line()}, "
             f"{base['threads']} threads:", "",
             "| model | visual tokens / question | tiles compressed | accuracy | s / question |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {labels[name]} | {r['visual_tokens']:.1f} | {r['compressed_tiles']} of {r['tiles']} | "
                     f"{r['accuracy']:.1%} | {r['seconds']:.3f} |")
    lines += ["", f"Visual tokens cut by {cut:.1%}; accuracy {100 * -loss:+.1f} points.", ""]
    if bound:
        lines += [f"Compressing exactly the tiles without objects ({bound['empty_tiles']} of {bound['tiles']}, "
                  f"thumbnails and single tiles kept) would cut {bound['token_cut']:.1%}: a larger cut compresses "
                  "tiles with objects in them.", ""]
    lines += [targets_line(summary["targets"]), "", "Steps:", ""]
    lines += [f"    {v['command']}    # {v['seconds']} s" for v in summary["steps"].values()]
    (work / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="ViCO on a tiny checkpoint: a tiny InternVL3.5-Flash and its report.")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="the checkpoint to start from (default: shipped)")
    ap.add_argument("--work", default="scratch/tiny-flash", help="working directory (data, runs, evaluations)")
    ap.add_argument("--data-n", type=int, default=8000, help="training questions for both stages")
    ap.add_argument("--eval-n", type=int, default=500, help="held-out questions per evaluation")
    ap.add_argument("--consistency-steps", type=int, default=1200, help="steps of the consistency stage")
    ap.add_argument("--router-steps", type=int, default=200, help="steps of the router stage")
    args = ap.parse_args(argv)
    for name in ("data_n", "eval_n", "consistency_steps", "router_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    run(args.model, Path(args.work), args.data_n, args.eval_n, args.consistency_steps, args.router_steps)
    print((Path(args.work) / "report.md").read_text())


if __name__ == "__main__":
    main()
