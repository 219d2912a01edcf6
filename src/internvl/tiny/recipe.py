"""`make tiny`: the tiny InternVL's whole recipe, from nothing to the shipped checkpoint, through the CLI.

Every step is a command a user could type (printed before it runs), so the shipped model is trained only by
`internvl train`:

1. the BPE tokenizer           python -m internvl.tiny.tokenizer --out W/tokenizer
2. training data               python -m internvl.tiny.dataset --out W/data --n N --seed 0 --describe --ground
3. counting data               python -m internvl.tiny.dataset --out W/data --n N2 --seed 60000 \
                                   --types count_shape,compare --name shapes_counting
4. stage 0 (vision tower)      internvl train --model tiny --tokenizer W/tokenizer --stage 0 ... --output-dir W/stage0
5. stage 2 (LLM + projector)   internvl train --model W/stage0/checkpoint-S --stage 2 --freeze-backbone ...
                               on W/data/stage2_meta.json: questions + counting questions + descriptions
                               (repeat_time 0.7), the meta files of steps 2 and 3 merged
6. held-out evaluation         internvl eval shapes --model W/stage2/checkpoint-S --n 500 --out W/eval
7. ship                        bf16 weights + tokenizer + model card -> src/internvl/tiny/model/

A step whose result is already complete is skipped, and an interrupted training stage continues with
`--resume`, so an interrupted `make tiny` picks up where it stopped. `W/recipe.json` records each step's
command, wall time and CPU time; the model card quotes the wall times.

    python -m internvl.tiny.recipe [--work scratch/tiny-recipe] [--out src/internvl/tiny/model]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import MODEL_DIR

SEED = 0
TRAIN_EXAMPLES = 60_000
# Counting by shape (count_shape, and compare, which counts by shape in two images) is what the balanced mix
# leaves behind (36% and 75% where every other type is at 83-100%, docs/tiny-training.md), so stage 2 sees
# extra questions of those two types, from seeds after the main set's, and descriptions less often.
COUNTING_TYPES = ("count_shape", "compare")
COUNTING_EXAMPLES = 28_000
DESCRIBE_REPEAT = 0.7
EVAL_EXAMPLES = 500
# Stage 0 pre-trains the vision tower and projector alone (no LLM forward, so it is cheap per image) to mark
# every object with one image token naming its color and shape (`train/region_align.py`): shape is what the
# first recipe never learned end to end. Stage 2 then trains the LLM and the projector on questions and
# descriptions with the tower frozen, which also halves the cost of a step (no backward through the ViT).
# There is no stage 1: its job (a projector the LLM can read before the LLM trains) is done by stage 0,
# whose tokens are aligned with the LLM's own word embeddings.
COMMON = ["--per-device-batch-size", "16", "--bf16", "--num-workers", "1", "--seed", str(SEED),
          "--save-total-limit", "2", "--no-progress"]
STAGE0 = ["--stage", "0", "--lr", "1e-3", "--max-steps", "1500", "--warmup-ratio", "0.03", "--save-steps", "500"]
STAGE2 = ["--stage", "2", "--freeze-backbone", "--lr", "5e-4", "--max-steps", "5000", "--warmup-ratio", "0.03",
          "--min-lr-ratio", "0.05", "--save-steps", "500", "--packed", "--max-packed-tokens", "4096"]


def cli(*args: str) -> list[str]:
    """An `internvl` command line run with this interpreter."""
    return [sys.executable, "-m", "internvl", *args]


def _done(run_dir: Path, steps: int) -> bool:
    return (run_dir / f"checkpoint-{steps}" / "config.json").exists()


def _steps(args: list[str]) -> int:
    return int(args[args.index("--max-steps") + 1])


def plan(work: Path) -> list[tuple[str, list[str], bool]]:
    """(name, command, already done) for each step, in order."""
    tok, data, s0, s2 = work / "tokenizer", work / "data", work / "stage0", work / "stage2"

    def train(model: str, extra: list[str], meta: Path, out: Path, stage_args: list[str]) -> list[str]:
        resume = ["--resume"] if out.exists() and any(out.glob("checkpoint-*")) else []
        return cli("train", "--model", model, *extra, "--meta-path", str(meta), "--output-dir", str(out),
                    *stage_args, *COMMON, *resume)

    return [
        ("tokenizer", [sys.executable, "-m", "internvl.tiny.tokenizer", "--out", str(tok)],
         (tok / "tokenizer.json").exists()),
        ("data", [sys.executable, "-m", "internvl.tiny.dataset", "--out", str(data), "--n", str(TRAIN_EXAMPLES),
                  "--seed", str(SEED), "--describe", "--ground"], (data / "shapes_train_ground_meta.json").exists()),
        ("counting data", [sys.executable, "-m", "internvl.tiny.dataset", "--out", str(data), "--n",
                           str(COUNTING_EXAMPLES), "--seed", str(TRAIN_EXAMPLES), "--types", ",".join(COUNTING_TYPES),
                           "--name", "shapes_counting"], (data / "shapes_counting_meta.json").exists()),
        ("stage0", train("tiny", ["--tokenizer", str(tok)], data / "shapes_train_ground_meta.json", s0, STAGE0),
         _done(s0, _steps(STAGE0))),
        ("stage2", train(str(s0 / f"checkpoint-{_steps(STAGE0)}"), [], data / "stage2_meta.json", s2, STAGE2),
         _done(s2, _steps(STAGE2))),
        ("eval", cli("eval", "shapes", "--model", str(final_checkpoint(work)), "--n", str(EVAL_EXAMPLES), "--out",
                     str(work / "eval")), _evaluated(work / "eval" / "summary.json", final_checkpoint(work))),
    ]


def final_checkpoint(work: Path) -> Path:
    """The checkpoint the recipe evaluates and ships: stage 2's last."""
    return work / "stage2" / f"checkpoint-{_steps(STAGE2)}"


def _evaluated(summary: Path, checkpoint: Path) -> bool:
    """An evaluation of this very checkpoint is done: a work directory left by a recipe with another stage-2
    length holds one of another checkpoint, whose numbers must not go on this one's model card."""
    try:
        return json.loads(summary.read_text()).get("model") == str(checkpoint)
    except (OSError, ValueError):  # none yet, or cut short while being written
        return False


def stage2_meta(data: Path) -> Path:
    """The stage-2 mix: the question and description datasets of step 2 and the counting questions of step 3
    in one meta file, descriptions at `DESCRIBE_REPEAT`."""
    meta = json.loads((data / "shapes_train_meta.json").read_text())
    meta |= json.loads((data / "shapes_counting_meta.json").read_text())
    meta["shapes_train_describe"]["repeat_time"] = DESCRIBE_REPEAT
    path = data / "stage2_meta.json"
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def targets_line(targets: dict[str, bool]) -> str:
    """A report's verdict line: each target and whether it was met."""
    return "Targets: " + "; ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in targets.items())


def weights_digest(model: str) -> str | None:
    """A short digest of a checkpoint directory's weight files; None for what is not a directory (a preset)."""
    path = Path(model)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def claim_work(record: dict, key: str, model: str, work: Path) -> None:
    """Tie a post-training work directory to the model it starts from, by path and by weights: `make tiny`
    ships new weights to the same path, and a work directory of the old ones must not be reused for them."""
    if isinstance(record.get(key), dict):  # a step's entry: the claim would be overwritten by the step's time
        raise ValueError(f"claim key {key!r} is also a step's name")
    model = str(Path(model).resolve()) if Path(model).exists() else model
    now = (model, weights_digest(model))
    if key not in record:
        record[key], record[f"{key}_weights"] = now
        return
    was = (record[key], record.get(f"{key}_weights"))
    if was != now:
        raise SystemExit(f"error: {work} holds a run on {was[0]} (weights {was[1] or 'not recorded'}), not on "
                         f"{now[0]} (weights {now[1]}): use another --work")


def open_work(work: Path, key: str | None = None, model: str | None = None) -> tuple[dict, Path]:
    """A recipe's work directory (made if new) and its record `W/recipe.json` (each finished step's command and
    time); with `key`, the directory is tied to `model` (`claim_work`) before any step runs."""
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "recipe.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if key is not None:
        claim_work(record, key, model, work)
    return record, record_path


def save_record(record: dict, record_path: Path) -> None:
    """Write the record whole or not at all: a recipe killed mid-write must not leave a record it cannot read."""
    tmp = record_path.with_name(record_path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, record_path)


def run_command(name: str, command: list[str], work: Path) -> None:
    """Run a recipe's step; a failure stops the recipe with the step's name instead of a traceback (the step
    printed its own error), and what is finished stays in `work` for the next run to go on from."""
    code = subprocess.run(command).returncode
    if code:
        raise SystemExit(f"[{name}] failed (exit {code}), see above; finished steps are kept in {work} and the "
                         "next run goes on from them")


def run_step(name: str, command: list[str], done: bool, record: dict, record_path: Path) -> None:
    """Run one recipe step (printed first, as a user would type it) unless done; record its command, wall time
    and CPU time (of the step's processes) in `record_path`. An interrupted-and-resumed step (`--resume`) adds
    its pieces of time."""
    if done:
        print(f"[{name}] done already", flush=True)
        return
    if not isinstance(record.get(name, {}), dict):  # a claim (`claim_work`), which the step's entry would erase
        raise ValueError(f"step name {name!r} is also a claim key of the record")
    print(f"[{name}] $ {shlex.join(command)}", flush=True)
    start, cpu0 = time.perf_counter(), _children_cpu()
    run_command(name, command, record_path.parent)
    previous = record.get(name, {}) if "--resume" in command else {}
    record[name] = {"command": shlex.join(command),
                    "seconds": round(previous.get("seconds", 0.0) + time.perf_counter() - start, 1),
                    "cpu_seconds": round(previous.get("cpu_seconds", 0.0) + _children_cpu() - cpu0, 1)}
    save_record(record, record_path)


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run(work: Path, out: Path) -> Path:
    record, record_path = open_work(work)
    for name, command, done in plan(work):
        if name == "stage2":
            stage2_meta(work / "data")
        run_step(name, command, done, record, record_path)
    from .ship import ship
    return ship(final_checkpoint(work), out, record, json.loads((work / "eval" / "summary.json").read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the tiny InternVL from scratch and ship it.")
    parser.add_argument("--work", default="scratch/tiny-recipe", help="working directory (data, runs, eval)")
    parser.add_argument("--out", default=str(MODEL_DIR), help="where the shipped checkpoint goes")
    args = parser.parse_args(argv)
    print(f"shipped {run(Path(args.work), Path(args.out))}")


if __name__ == "__main__":
    main()
