"""Ship a trained tiny checkpoint: bf16 weights in the official layout, its tokenizer, and a model card.

The card is written from what the recipe measured (`recipe.json`: commands and wall times; the evaluation's
`summary.json`: accuracy per question type and the blind baseline), so a rerun of `make tiny` rewrites it
with its own numbers.
"""

from __future__ import annotations

import platform
import shlex
import sys
from pathlib import Path

import torch

from ..checkpoint.loader import OFFICIAL, load_model, save_checkpoint

TRAIN_STEPS = ("tokenizer", "data", "counting data", "stage0", "stage2")


def ship(checkpoint: str | Path, out: str | Path, record: dict, summary: dict) -> Path:
    """Write `checkpoint` to `out` (replaced atomically) as bf16, with README.md as its model card."""
    model, directory, _ = load_model(checkpoint, dtype=torch.bfloat16)
    path = save_checkpoint(model, out, OFFICIAL, side_files_from=directory)
    n = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in path.iterdir())
    (path / "README.md").write_text(model_card(model.config, n, size, record, summary))
    return path


def _portable(command: str) -> str:
    """A recorded command as a reader would type it (`python`, not this machine's interpreter path)."""
    return command.replace(shlex.quote(sys.executable), "python", 1)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def model_card(cfg, params: int, size_bytes: int, record: dict, summary: dict) -> str:
    v, llm = cfg.vision, cfg.llm
    s2_words = record.get("stage2", {}).get("command", "").split()
    s2_steps = int(s2_words[s2_words.index("--max-steps") + 1]) if "--max-steps" in s2_words else 0
    pace = f"; stage 2 took {record['stage2']['seconds'] / s2_steps:.2f} s per step" if s2_steps else ""
    train_s = sum(record.get(k, {}).get("seconds", 0.0) for k in TRAIN_STEPS)
    rows = [f"| {c} | {r['n']} | {_pct(r['accuracy'])} | {_pct(summary['blind']['per_category'][c]['accuracy'])} |"
            for c, r in summary["per_category"].items()]
    ranked = sorted(summary["per_category"].items(), key=lambda kv: kv[1]["accuracy"])
    weakest = ", ".join(f"{c} ({_pct(r['accuracy'])}, blind {_pct(summary['blind']['per_category'][c]['accuracy'])})"
                        for c, r in ranked[:3])
    steps = "\n".join(f"    {_portable(record[k]['command'])}    # {record[k]['seconds']:.0f} s" for k in
                      (*TRAIN_STEPS, "eval") if k in record)
    return f"""# internvl tiny

A {params / 1e6:.2f}M-parameter InternVL trained from scratch by this project's own pipeline on the synthetic
shapes world (`internvl/tiny/world.py`). It is the default model of `internvl chat`, `internvl serve`,
`internvl eval` and `make demo`: the model a fresh machine runs without downloading anything. It knows
nothing but its world: colored circles, squares and triangles on a plain background.

## Architecture

The real InternVL architecture at toy size (`internvl info tiny`):
InternViT ({v.num_hidden_layers} layers, width {v.hidden_size}, {v.image_size}px tiles, patch {v.patch_size})
-> pixel shuffle (0.5) -> `mlp1` -> Qwen2-style decoder ({llm.num_hidden_layers} layers, width
{llm.hidden_size}, GQA {llm.num_attention_heads}/{llm.num_key_value_heads} heads, tied embeddings),
{cfg.num_image_token} image tokens per tile, dynamic tiling up to {cfg.max_dynamic_patch} tiles + a
thumbnail, the `{cfg.template}` chat template. Tiles are {v.image_size}px rather than 448px so that the
whole recipe trains on a 2-core CPU. Tokenizer: a {llm.vocab_size}-row byte-level BPE trained with
`tokenizers` on the world's conversations, carrying the InternVL special tokens; a shape's plural encodes
as its singular plus "s" ("How many circles" holds the " circle" token stage 0 aligns with circles). Weights: bf16,
official layout, {size_bytes / 2**20:.1f} MiB in all.

## Data and recipe

Training data: the world's first 60,000 examples (seeds 0-59,999; all seven question types in equal
shares) exported to the official meta JSON + JSONL + PNG format, plus two more datasets on the same images:
"Describe the image." answered with every object, left to right ("3 objects: red circle, blue square, green
triangle"), and "Locate every object." answered in InternVL's grounding markup (`<ref>red circle</ref><box>[[x1,
y1, x2, y2]]</box>`, boxes in 0-1000). Stage 0 pre-trains the vision tower and the projector on the grounding
records alone (region-text alignment, `internvl train --stage 0`: every image token is trained to name the
object whose box center it holds, against the LLM's own word embeddings, or nothing), so that each object is
marked by one token that says its color and shape before the LLM learns anything. Stage 2 then trains the LLM
and the projector on the questions, 28,000 more count_shape and compare questions (seeds 60,000 on: counting
by shape is the hardest type) and the descriptions (at repeat_time 0.7), with the tower frozen. Evaluation asks only the seven
question types, on the held-out seeds 10**9 + i, which training never sees. `make tiny` reproduces everything
with fixed seeds; its steps:

{steps}

Training took {train_s / 60:.1f} minutes in all on {platform.machine()} with 2 CPU cores (tokenizer and data
included){pace}.

## Accuracy

`internvl eval shapes --n {summary['n']}` (greedy, first word exact match); blind = the same model with
every image replaced by a blank one of the same size:

| question type | n | accuracy | blind |
|---|---|---|---|
{chr(10).join(rows)}
| **overall** | {summary['n']} | **{_pct(summary['accuracy'])}** | {_pct(summary['blind']['accuracy'])} |

## Limits

Only the shapes world: photographs, text, and questions worded differently from the training questions
get meaningless answers. Its weakest question types: {weakest}.
"""
