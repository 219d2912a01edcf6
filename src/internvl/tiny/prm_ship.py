"""Ship the tiny PRM: bf16 weights in the official layout, its tokenizer, the accuracy-vs-N chart and a model
card written from what `make tiny-prm` measured (`recipe.json`, the PRM data's `stats.json`, the Best-of-N
evaluation's `summary.json`), so a rerun on another policy rewrites it with its own numbers."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import torch

from ..checkpoint.loader import OFFICIAL, load_model, save_checkpoint
from ..hardware import machine_line
from ..tts.prm import PRM_SYSTEM_PROMPT

STEPS = ("steps-data", "policy", "prm-data", "prm-tokenizer", "prm", "eval")


def ship(checkpoint: str | Path, out: str | Path, record: dict, work: str | Path) -> Path:
    """Write the PRM at `checkpoint` to `out` (replaced atomically) with its card and chart."""
    work = Path(work)
    model, directory, _ = load_model(checkpoint, dtype=torch.bfloat16)
    # chat() with the PRM then renders the PRM conversation's system prompt, as VisualPRM's config does
    model.config = model.config.replace(system_message=PRM_SYSTEM_PROMPT)
    path = save_checkpoint(model, out, OFFICIAL, side_files_from=directory)
    summary = json.loads((work / "eval" / "summary.json").read_text())
    stats = json.loads((work / "prm-data" / "stats.json").read_text())
    shutil.copyfile(work / "eval" / "best_of_n.png", path / "best_of_n.png")
    n = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in path.iterdir() if f.suffix != ".png")
    (path / "README.md").write_text(model_card(n, size, record, stats, summary))
    return path


def _portable(command: str) -> str:
    """The command as a user would type it from the repository root (no local interpreter or checkout path)."""
    return command.replace(shlex.quote(sys.executable), "python", 1).replace(str(Path.cwd()) + "/", "")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def model_card(params: int, size_bytes: int, record: dict, stats: dict, summary: dict) -> str:
    curve = summary["curve"]
    keys = [k for k in ("prm", "orm", "majority", "pass") if k in curve]
    head = "| N | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys)
    rows = "\n".join(f"| {n} | " + " | ".join(_pct(curve[k][i]) for k in keys) + " |" for i, n in enumerate(curve["n"]))
    best = summary["best_of"]
    cats = "\n".join(f"| {c} | {e['n']} | {_pct(e['greedy'])} | {_pct(e['prm'])} | {_pct(e['majority'])} |"
                     for c, e in summary["per_category"].items())
    steps = "\n".join(f"    {_portable(record[k]['command'])}    # {record[k]['seconds']:.0f} s" for k in STEPS
                      if k in record)
    total = sum(record.get(k, {}).get("seconds", 0.0) for k in STEPS)
    gain = curve["prm"][-1] - curve["prm"][0]
    at8 = curve["n"].index(8) if 8 in curve["n"] else len(curve["n"]) - 1
    n8, prm8, maj8, greedy = curve["n"][at8], curve["prm"][at8], curve["majority"][at8], curve["prm"][0]
    verdict = (f"At N = {n8}: PRM {_pct(prm8)}, majority {_pct(maj8)}, greedy {_pct(greedy)}; the target (PRM at least "
               f"5 points above greedy and not below majority) is {'met' if prm8 >= greedy + 0.05 and prm8 >= maj8 else 'NOT met'}.")
    return f"""# internvl tiny PRM

A {params / 1e6:.2f}M-parameter process reward model for the tiny InternVL's shapes world, trained by this
project's own pipeline the way VisualPRM was trained for InternVL: the default verifier of
`internvl chat --best-of N` and `internvl eval shapes --best-of N` (`internvl.tts`). Same architecture and
tokenizer as the tiny model (its weights are the starting point); official layout, bf16,
{size_bytes / 2**20:.1f} MiB. `model.select_best_response(tokenizer, question, responses, pixel_values)` and
`model.score_steps(...)` work on it as on VisualPRM; `chat()` renders VisualPRM's system prompt.

## How it was made (`make tiny-prm`)

1. The policy learns step-wise answers: a question followed by "Answer step by step." is answered with all
   objects, then the objects the question is about, then `Answer: X` (`internvl/tiny/steps.py`), mixed with
   the one-word answers and descriptions of the same images.
2. PRM data as VisualPRM400K: {stats['questions']} training-split questions, {stats['responses']} sampled
   step-wise responses each (temperature 1.0, top-k 50), every step prefix scored by Monte Carlo
   ({stats['mc']} continuations; the share that ends with the right answer), labelled `+` when the score is
   above 0; plus {stats['words']} one-word answers per question, labelled by their correctness. Written as
   the official SFT conversation (system prompt, the question with the first step, `+` / `-` per step):
   {stats['records']} conversations, {stats['steps']} steps, {_pct(stats['plus_share'])} `+`. The sampled
   step-wise responses were right {_pct(stats['step_response_accuracy'])} of the time.
3. `internvl train` fine-tunes the policy's weights on that data (the loss falls on `+` / `-`).

Commands and wall times ({machine_line()}; {total / 60:.0f} minutes in all):

{steps}

## Best-of-N on 500 held-out questions

Policy: `{summary['model']}`, step-wise answers, candidate 0 greedy and the others sampled at temperature
0.6, top-p 0.95; accuracy of the chosen answer (`Answer:` first word exact match). `pass` is the share of
questions with at least one right candidate among the N, what a perfect verifier would reach.

{head}
{rows}

PRM Best-of-{best} moves accuracy by {100 * gain:+.1f} points over greedy (N = 1). {verdict}
Per question type at N = {best}:

| question type | n | greedy | prm | majority |
|---|---|---|---|---|
{cats}

![accuracy against N](best_of_n.png)

## Limits

It judges only the shapes world's step-wise answers and one-word answers of the tiny models; it sees what
the tiny vision tower sees, so it is no better at telling shapes apart than the policy.
"""
