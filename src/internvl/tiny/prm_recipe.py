"""`make tiny-prm`: a tiny process reward model, trained the way VisualPRM was, for any tiny policy.

Every step is a command a user could type (printed before it runs); training is `internvl train` only:

1. step-wise data   python -m internvl.tiny.steps --out W/steps-data --n 10000
2. step-wise policy internvl train --model POLICY --stage 2 ... --output-dir W/policy
3. PRM data         python -m internvl.tiny.prm_data --policy W/policy/checkpoint-S --out W/prm-data
4. PRM tokenizer    python -m internvl.tiny.prm_tokenizer --tokenizer W/policy/checkpoint-S --out W/prm-tokenizer
5. PRM              internvl train --model W/policy/checkpoint-S --tokenizer W/prm-tokenizer
                        --meta-path W/prm-data/prm_meta.json ... --output-dir W/prm
6. Best-of-N eval   internvl eval shapes --model W/policy/... --prm W/prm/... --best-of 16 --step-by-step --n 500
7. ship             bf16 PRM + model card + accuracy-vs-N chart -> src/internvl/tiny/prm/

Why step 2: a PRM judges steps, so the policy must answer in steps. The shipped tiny model answers one word,
so the recipe first fine-tunes it (briefly) on the world's step-wise answers (`steps.py`), mixed 1:1:1 with
the one-word answers and descriptions of the same images so it keeps answering plain questions in one word.
A policy that already answers step by step (e.g. a tiny model trained with that data) skips it:
`--policy-steps 0`. The PRM starts from the policy's weights, as VisualPRM starts from InternVL's, with the
policy's tokenizer plus merges for VisualPRM's system prompt (`prm_tokenizer.py`: 749 tokens -> 190).

A step whose result exists is skipped and an interrupted training continues with `--resume`, so an
interrupted run picks up where it stopped. `W/recipe.json` records each step's command, wall and CPU time.

    python -m internvl.tiny.prm_recipe [--policy src/internvl/tiny/model] [--work scratch/tiny-prm]
                                       [--out src/internvl/tiny/prm] [--policy-steps 0] [--stop-after STEP]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from . import DEFAULT_MODEL, PRM_DIR
from .recipe import cli as _cli
from .recipe import open_work, run_step

STEP_EXAMPLES = 10_000
PRM_QUESTIONS = 400
EVAL_EXAMPLES = 500
BEST_OF = 16
# The policy must answer step by step well before its samples teach a PRM anything: its sampled (T = 1.0)
# step-wise answers were right 20% of the time after 50 steps (loss ~1.0, many malformed), 31% after 500
# (loss ~0.3; greedy 45%) and 66% after 2000 (loss ~0.1, ~35 min on 2 cores).
POLICY_STEPS, PRM_STEPS = 2000, 200
COMMON = ["--per-device-batch-size", "16", "--packed", "--bf16", "--num-workers", "1", "--seed", "0",
          "--save-total-limit", "1", "--no-progress", "--warmup-ratio", "0.05", "--min-lr-ratio", "0.1"]
# The vision tower stays frozen in both runs: it is most of the compute (448 patch tokens per image against
# ~120 text tokens), and neither the step format nor the +/- verdicts need new visual features.
POLICY = ["--stage", "2", "--freeze-backbone", "--lr", "3e-4", "--max-packed-tokens", "2048", "--save-steps", "50"]
PRM = ["--stage", "2", "--freeze-backbone", "--lr", "2e-4", "--max-packed-tokens", "4096", "--save-steps", "50"]


def _done(run_dir: Path, steps: int) -> bool:
    return (run_dir / f"checkpoint-{steps}" / "config.json").exists()


def plan(work: Path, policy: str, policy_steps: int = POLICY_STEPS, prm_steps: int = PRM_STEPS,
         prm_questions: int = PRM_QUESTIONS, eval_n: int = EVAL_EXAMPLES, best_of: int = BEST_OF) -> list[tuple[str, list[str], bool]]:
    """(name, command, already done) for each step, in order."""
    data, pol, prm_data, prm, ev = (work / d for d in ("steps-data", "policy", "prm-data", "prm", "eval"))

    def train(model: str, meta: Path, out: Path, steps: int, args: list[str]) -> list[str]:
        resume = ["--resume"] if out.exists() and any(out.glob("checkpoint-*")) else []
        return _cli("train", "--model", model, "--meta-path", str(meta), "--output-dir", str(out),
                    "--max-steps", str(steps), *args, *COMMON, *resume)

    steps: list[tuple[str, list[str], bool]] = []
    if policy_steps:
        meta = data / "shapes_steps_meta.json"
        steps += [("steps-data", [sys.executable, "-m", "internvl.tiny.steps", "--out", str(data), "--n",
                                  str(STEP_EXAMPLES)], meta.exists()),
                  ("policy", train(policy, meta, pol, policy_steps, POLICY), _done(pol, policy_steps))]
        policy = str(pol / f"checkpoint-{policy_steps}")
    tok = work / "prm-tokenizer"
    steps += [
        ("prm-data", [sys.executable, "-m", "internvl.tiny.prm_data", "--policy", policy, "--out", str(prm_data),
                      "--n", str(prm_questions)], (prm_data / "stats.json").exists()),
        ("prm-tokenizer", [sys.executable, "-m", "internvl.tiny.prm_tokenizer", "--tokenizer", policy, "--out",
                           str(tok)], (tok / "tokenizer.json").exists()),
        ("prm", train(policy, prm_data / "prm_meta.json", prm, prm_steps, PRM + ["--tokenizer", str(tok)]),
         _done(prm, prm_steps)),
        ("eval", _cli("eval", "shapes", "--model", policy, "--prm", str(prm / f"checkpoint-{prm_steps}"),
                      "--best-of", str(best_of), "--step-by-step", "--n", str(eval_n), "--batch-size", "64",
                      "--out", str(ev)), (ev / "summary.json").exists()),
    ]
    return steps


def run(work: Path, out: Path, policy: str, stop_after: str | None = None, **kw) -> Path | None:
    record, record_path = open_work(work, "starting_policy", policy)
    steps = plan(work, policy, **kw)
    if stop_after is not None and stop_after not in [name for name, _, _ in steps]:
        raise ConfigError(f"--stop-after {stop_after!r} is not a step; steps: {', '.join(n for n, _, _ in steps)}")
    for name, command, done in steps:
        if stop_after == "before":
            return None
        if name == stop_after:
            stop_after = "before"
        run_step(name, command, done, record, record_path)
    if stop_after is not None:
        return None
    from .prm_ship import ship
    prm_steps = kw.get("prm_steps", PRM_STEPS)
    return ship(work / "prm" / f"checkpoint-{prm_steps}", out, record, work)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the tiny PRM (VisualPRM recipe) for a tiny policy and ship it.")
    parser.add_argument("--policy", default=DEFAULT_MODEL, help="the tiny policy (default: the shipped tiny model)")
    parser.add_argument("--work", default="scratch/tiny-prm", help="working directory (data, runs, eval)")
    parser.add_argument("--out", default=str(PRM_DIR), help="where the shipped PRM goes")
    parser.add_argument("--policy-steps", type=int, default=POLICY_STEPS,
                        help="steps of step-wise fine-tuning of the policy (0: it answers step by step already)")
    parser.add_argument("--prm-steps", type=int, default=PRM_STEPS, help="PRM training steps")
    parser.add_argument("--prm-questions", type=int, default=PRM_QUESTIONS, help="questions of the PRM data")
    parser.add_argument("--stop-after", default=None, help="stop after this step (e.g. prm-data)")
    args = parser.parse_args(argv)
    path = run(Path(args.work), Path(args.out), args.policy, args.stop_after, policy_steps=args.policy_steps,
               prm_steps=args.prm_steps, prm_questions=args.prm_questions)
    print(f"shipped {path}" if path else f"stopped after {args.stop_after}")


if __name__ == "__main__":
    main()
