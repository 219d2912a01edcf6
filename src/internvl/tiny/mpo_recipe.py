"""`make tiny-mpo`: the tiny model's preference-optimisation stage, the InternVL2.5-MPO recipe at toy size.

Every step is a command a user could type (printed before it runs):

1. baseline evaluation   internvl eval shapes --model M --n 500 --out W/eval-sft
2. preference pairs      python -m internvl.tiny.preference --model M --out W/pairs --n N --k K ...
3. MPO                   internvl train --method mpo --model M --meta-path W/pairs/shapes_pairs_meta.json ...
4. evaluation            internvl eval shapes --model W/mpo/checkpoint-S --n 500 --out W/eval-mpo
5. report                W/report.md and W/report.json: accuracy per question type before and after, the
                         targets (+5 points overall, no type down more than 2), wall and CPU time per step

M is any SFT checkpoint of the tiny world (default: the shipped model), so the stage re-runs on a retrained
model: `make tiny-mpo TINY_MPO_MODEL=DIR`. A finished step is skipped and an interrupted MPO run continues
with `--resume`; `W/recipe.json` records each step's command, wall time and CPU time, and the model it ran
on, by path and weights (another model, or new weights at the same path, needs another --work directory).

    python -m internvl.tiny.mpo_recipe [--model DIR] [--work scratch/tiny-mpo]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..hardware import machine_line
from . import DEFAULT_MODEL
from .preference import NAME
from .world import QUESTION_TYPES
from .recipe import cli as _cli
from .recipe import open_work, run_step, targets_line

EVAL_N = 500
TARGET_GAIN, MAX_TYPE_LOSS, BUDGET_MINUTES = 0.05, 0.02, 30.0
# Sampling: 8 answers at temperature 1 to each of 2100 training questions (300 per type, seeds the SFT data
# already used: MPO re-uses the SFT prompts, as MMPR does); the two likeliest wrong answers become rejected ones.
PAIRS = ["--n", "2100", "--k", "8", "--temperature", "1.0", "--pairs-per-question", "2", "--batch-size", "64"]
# MPO: the official loss (sigmoid 0.8 + bco_pair 0.2 + the SFT term), beta 0.1, a global batch of 16 pairs,
# two epochs with the reference log-probs computed once, a short warmup and a cosine decay.
EPOCHS, BATCH = 2, 16
MPO = ["--lr", "5e-5", "--warmup-ratio", "0.05", "--per-device-batch-size", str(BATCH), "--packed",
       "--max-packed-tokens", "2048", "--bf16", "--precompute-ref", "--num-workers", "1", "--seed", "0",
       "--save-total-limit", "1", "--no-progress", "--log-steps", "5"]


def mpo_steps(meta: Path) -> int:
    pairs = next(iter(json.loads(meta.read_text()).values()))["length"]
    return max(1, math.ceil(EPOCHS * pairs / BATCH))


def run(model: str, work: Path) -> dict:
    record, record_path = open_work(work, "model", model)
    model = record["model"]
    evals = {"eval-sft": model}
    if not (work / "eval-sft" / "summary.json").exists():
        run_step("eval-sft", _cli("eval", "shapes", "--model", model, "--n", str(EVAL_N), "--out",
                                  str(work / "eval-sft")), False, record, record_path)
    meta = work / "pairs" / f"{NAME}_meta.json"
    if not meta.exists():
        run_step("pairs", [sys.executable, "-m", "internvl.tiny.preference", "--model", model, "--out",
                           str(work / "pairs"), *PAIRS], False, record, record_path)
    steps, out = mpo_steps(meta), work / "mpo"
    final = out / f"checkpoint-{steps}"
    if not (final / "config.json").exists():
        resume = out.exists() and any(out.glob("checkpoint-*"))
        run_step("mpo", _cli("train", "--method", "mpo", "--model", model, "--meta-path", str(meta), "--output-dir",
                             str(out), "--max-steps", str(steps), "--save-steps", str(max(1, steps // 2)), *MPO,
                             *(["--resume"] if resume else [])), False, record, record_path)
    evals["eval-mpo"] = str(final)
    if not (work / "eval-mpo" / "summary.json").exists():
        run_step("eval-mpo", _cli("eval", "shapes", "--model", str(final), "--n", str(EVAL_N), "--out",
                                  str(work / "eval-mpo")), False, record, record_path)
    return report(work, record)


def report(work: Path, record: dict) -> dict:
    """Compare the two evaluations; write report.json and report.md beside them."""
    before = json.loads((work / "eval-sft" / "summary.json").read_text())
    after = json.loads((work / "eval-mpo" / "summary.json").read_text())
    pairs = json.loads((work / "pairs" / "summary.json").read_text())
    types = {t: {"n": after["per_category"][t]["n"], "sft": before["per_category"][t]["accuracy"],
                 "mpo": after["per_category"][t]["accuracy"]} for t in QUESTION_TYPES}
    for v in types.values():
        v["change"] = v["mpo"] - v["sft"]
    steps = ("eval-sft", "pairs", "mpo", "eval-mpo")  # the whole `make tiny-mpo`
    minutes = sum(record.get(s, {}).get("seconds", 0.0) for s in steps) / 60
    cpu_minutes = sum(record.get(s, {}).get("cpu_seconds", 0.0) for s in steps) / 60
    gain = after["accuracy"] - before["accuracy"]
    worst = min(v["change"] for v in types.values())
    summary = {"model": record["model"], "sft": before["accuracy"], "mpo": after["accuracy"], "gain": gain,
               "worst_type_change": worst, "per_type": types, "pairs": pairs["pairs"],
               "questions": pairs["questions"], "always_right": pairs["always_right"],
               "always_wrong": pairs["always_wrong"], "minutes": round(minutes, 1), "cpu_minutes": round(cpu_minutes, 1),
               "targets": {"gain >= 5 points": gain >= TARGET_GAIN, "no type down > 2 points": worst >= -MAX_TYPE_LOSS,
                           "under 30 minutes": minutes < BUDGET_MINUTES},
               "steps": {k: v for k, v in record.items() if isinstance(v, dict)}}
    (work / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# MPO on the tiny model: {record['model']}", "",
             f"Held-out accuracy (`internvl eval shapes --n {EVAL_N}`), the SFT model MPO starts from and the MPO "
             "model:", "", "| question type | n | SFT | MPO | change |", "|---|---|---|---|---|"]
    for t, v in types.items():
        lines.append(f"| {t} | {v['n']} | {v['sft']:.1%} | {v['mpo']:.1%} | {100 * v['change']:+.1f} |")
    lines += [f"| **overall** | {after['n']} | **{before['accuracy']:.1%}** | **{after['accuracy']:.1%}** | "
              f"**{100 * gain:+.1f}** |", "",
              f"Pairs: {pairs['pairs']} from {pairs['questions']} training questions ({pairs['always_right']} always "
              f"right and {pairs['always_wrong']} always wrong, skipped).", "",
              f"Time for both evaluations, the pairs and MPO: {minutes:.1f} min wall, {cpu_minutes:.1f} min CPU "
              f"({machine_line()}).", "",
              targets_line(summary["targets"]),
              "", "Steps:", ""]
    lines += [f"    {v['command']}    # {v['seconds']} s wall, {v.get('cpu_seconds', '?')} s CPU"
              for k, v in record.items() if isinstance(v, dict)]
    (work / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Preference pairs from the tiny model, MPO, and the evaluation report.")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="the SFT checkpoint to start from (default: shipped)")
    ap.add_argument("--work", default="scratch/tiny-mpo", help="working directory (pairs, runs, evaluations)")
    args = ap.parse_args(argv)
    summary = run(args.model, Path(args.work))
    print((Path(args.work) / "report.md").read_text())
    print(f"SFT {summary['sft']:.1%} -> MPO {summary['mpo']:.1%} ({100 * summary['gain']:+.1f} points) in "
          f"{summary['minutes']} min")


if __name__ == "__main__":
    main()
