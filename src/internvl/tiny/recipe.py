"""`make tiny`: the tiny InternVL's whole recipe, from nothing to the shipped checkpoint, through the CLI.

Every step is a command a user could type (printed before it runs), so the shipped model is trained only by
`internvl train`:

1. the BPE tokenizer           python -m internvl.tiny.tokenizer --out W/tokenizer
2. training data               python -m internvl.tiny.dataset --out W/data --n N --seed 0 --describe
3. stage 1 (projector only)    internvl train --model tiny --tokenizer W/tokenizer --stage 1 ... --output-dir W/stage1
4. stage 2 (everything)        internvl train --model W/stage1 --stage 2 ... --output-dir W/stage2
5. held-out evaluation         internvl eval shapes --model W/stage2 --n 500 --out W/eval
6. ship                        bf16 weights + tokenizer + model card -> src/internvl/tiny/model/

A step whose result is already complete is skipped, and an interrupted training stage continues with
`--resume`, so an interrupted `make tiny` picks up where it stopped. `W/recipe.json` records each step's
command and wall time; the model card quotes them.

    python -m internvl.tiny.recipe [--work scratch/tiny-recipe] [--out src/internvl/tiny/model]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import MODEL_DIR

SEED = 0
TRAIN_EXAMPLES = 60_000
EVAL_EXAMPLES = 500
# Both stages pack 16 samples per step into one row (block-diagonal attention per sample) and train in bf16
# autocast with fp32 master weights, on the world's questions mixed 1:1 with descriptions of the same images.
# Stage 1 teaches the projector to read the (random, frozen) ViT before the LLM's gradients reach it; stage 2
# trains everything. The peak learning rate matters most: at 1.5e-3 the vision tower collapsed within 250
# steps (every image token the same large vector, the LLM answering from question priors); 5e-4 learns.
COMMON = ["--per-device-batch-size", "16", "--packed", "--max-packed-tokens", "2048", "--bf16",
          "--num-workers", "1", "--seed", str(SEED), "--save-total-limit", "2", "--no-progress"]
STAGE1 = ["--stage", "1", "--lr", "5e-4", "--max-steps", "150", "--warmup-ratio", "0.1", "--save-steps", "0"]
STAGE2 = ["--stage", "2", "--lr", "5e-4", "--max-steps", "5000", "--warmup-ratio", "0.03",
          "--min-lr-ratio", "0.05", "--save-steps", "500"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "internvl", *args]


def _done(run_dir: Path, steps: int) -> bool:
    return (run_dir / f"checkpoint-{steps}" / "config.json").exists()


def _steps(args: list[str]) -> int:
    return int(args[args.index("--max-steps") + 1])


def plan(work: Path) -> list[tuple[str, list[str], bool]]:
    """(name, command, already done) for each step, in order."""
    tok, data, s1, s2 = work / "tokenizer", work / "data", work / "stage1", work / "stage2"
    meta = data / "shapes_train_meta.json"

    def train(model: str, extra: list[str], out: Path, stage_args: list[str]) -> list[str]:
        resume = ["--resume"] if out.exists() and any(out.glob("checkpoint-*")) else []
        return _cli("train", "--model", model, *extra, "--meta-path", str(meta), "--output-dir", str(out),
                    *stage_args, *COMMON, *resume)

    return [
        ("tokenizer", [sys.executable, "-m", "internvl.tiny.tokenizer", "--out", str(tok)],
         (tok / "tokenizer.json").exists()),
        ("data", [sys.executable, "-m", "internvl.tiny.dataset", "--out", str(data), "--n", str(TRAIN_EXAMPLES),
                  "--seed", str(SEED), "--describe"], meta.exists()),
        ("stage1", train("tiny", ["--tokenizer", str(tok)], s1, STAGE1), _done(s1, _steps(STAGE1))),
        ("stage2", train(str(s1 / f"checkpoint-{_steps(STAGE1)}"), [], s2, STAGE2), _done(s2, _steps(STAGE2))),
        ("eval", _cli("eval", "shapes", "--model", str(s2 / f"checkpoint-{_steps(STAGE2)}"), "--n",
                      str(EVAL_EXAMPLES), "--out", str(work / "eval")), (work / "eval" / "summary.json").exists()),
    ]


def run(work: Path, out: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "recipe.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for name, command, done in plan(work):
        if done:
            print(f"[{name}] done already", flush=True)
            continue
        print(f"[{name}] $ {shlex.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        # an interrupted-and-resumed stage adds its pieces
        previous = record.get(name, {}).get("seconds", 0.0) if "--resume" in command else 0.0
        record[name] = {"command": shlex.join(command), "seconds": round(previous + seconds, 1)}
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    from .ship import ship
    checkpoint = work / "stage2" / f"checkpoint-{_steps(STAGE2)}"
    return ship(checkpoint, out, record, json.loads((work / "eval" / "summary.json").read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the tiny InternVL from scratch and ship it.")
    parser.add_argument("--work", default="scratch/tiny-recipe", help="working directory (data, runs, eval)")
    parser.add_argument("--out", default=str(MODEL_DIR), help="where the shipped checkpoint goes")
    args = parser.parse_args(argv)
    print(f"shipped {run(Path(args.work), Path(args.out))}")


if __name__ == "__main__":
    main()
