"""The tiny PRM's training data, built as VisualPRM400K was: policy samples, Monte Carlo step labels.

For each training-split question of the world: sample step-wise responses from the policy (the question +
`steps.STEP_INSTRUCTION`), score every step prefix by Monte Carlo (`tts/mc.py`: the share of sampled
continuations whose `Answer:` is right), and write each response as the official PRM conversation (system
prompt, the question with the first step, `+` / `-` per step). The policy's one-word answers to the plain
question are added as one-step responses labelled by their correctness, so the PRM also judges the answers
of a model that does not answer step by step. Writes

    OUT/images/*.png, OUT/prm.jsonl (official SFT conversations), OUT/prm_meta.json,
    OUT/mc_scores.jsonl (question, answer, response and steps_with_score, as the official pipeline's output)

    python -m internvl.tiny.prm_data --policy DIR --out OUT [--n 600 --seed 200000 --responses 4 --words 2 --mc 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

import torch

from ..chat import from_pretrained
from ..eval.answer_engine import make_engine
from ..eval.metrics import first_word_match
from ..processing.image import load_question_images
from ..processing.prompt import build_query
from ..processing.templates import get_template
from ..runtime import resolve_dtype
from ..tts.best_of_n import extract_answer
from ..tts.mc import MCConfig, Problem, sample_responses, step_scores
from ..tts.prm import prm_conversation
from .dataset import MAX_DYNAMIC_PATCH
from .steps import step_question
from .world import examples

log = logging.getLogger(__name__)
THRESHOLD = 0.0  # `+` when the Monte Carlo score is above it (the official --mc-threshold)


def _checker(answer: str):
    return lambda response: bool(first_word_match(extract_answer(response), answer))


def build(policy: str, out: str | Path, n: int, seed: int = 200_000, responses: int = 4, words: int = 2, mc: int = 4,
          max_batch: int = 96, dtype: str = "auto") -> dict:
    """Write the PRM data under `out`; returns counts (records, steps, `+` share) also saved as stats.json."""
    start = time.perf_counter()
    out = Path(out).resolve()
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    model, tokenizer = from_pretrained(policy, dtype=resolve_dtype(dtype, "cpu"))
    cfg = model.config
    template = get_template(cfg.template)
    exs = examples("train", n, seed)
    step_problems, word_problems, names = [], [], []
    for ex in exs:
        rendered = ex.images()
        stem = f"prm-{ex.seed:09d}"
        files = [f"{stem}.png"] if len(rendered) == 1 else [f"{stem}-{i + 1}.png" for i in range(len(rendered))]
        for img, name in zip(rendered, files):
            img.save(images / name, compress_level=1)
        names.append(files)
        tiles = load_question_images(rendered, cfg)
        pixels, patches = torch.cat(tiles), [t.shape[0] for t in tiles]
        for question, bucket in ((step_question(ex), step_problems), (ex.prompt, word_problems)):
            prompt = build_query(template, question, None, patches, cfg.num_image_token, cfg.system_message)
            bucket.append(Problem(prompt, pixels, _checker(ex.answer)))
    engine = make_engine(model, tokenizer, max_batch=max_batch)
    mc_cfg = MCConfig(responses=responses, mc=mc, max_new_tokens=96, seed=seed)
    step_responses = sample_responses(engine, tokenizer, step_problems, responses, mc_cfg)
    log.info("sampled %d step-wise responses in %.0fs", n * responses, time.perf_counter() - start)
    word_responses = sample_responses(engine, tokenizer, word_problems, words, MCConfig(max_new_tokens=8, seed=seed),
                                      seed_offset=7) if words else [[] for _ in exs]
    scored = step_scores(engine, tokenizer, step_problems, step_responses, mc_cfg)
    log.info("Monte Carlo scores done in %.0fs", time.perf_counter() - start)
    labels, records, empty_steps = Counter(), 0, 0
    with open(out / "prm.jsonl", "w", encoding="utf-8") as f, open(out / "mc_scores.jsonl", "w", encoding="utf-8") as g:
        for ex, files, per_steps, per_words, problem in zip(exs, names, scored, word_responses, word_problems):
            # A sampled response with an empty step ("a\n\n\n\nb") would be an empty human turn, which the
            # SFT data loader refuses: such degenerate samples are left out and counted.
            kept = [s for s in per_steps if all(x["step"].strip() for x in s)]
            empty_steps += len(per_steps) - len(kept)
            items = [(step_question(ex), s) for s in kept]
            items += [(ex.prompt, [{"step": w, "score": float(problem.is_correct(w)), "num_mc_correct":
                                    int(problem.is_correct(w)), "num_mc_total": 1}]) for w in per_words]
            for question, steps in items:
                conv = prm_conversation(question, [s["step"] for s in steps], [s["score"] for s in steps], THRESHOLD)
                image = files[0] if len(files) == 1 else files
                record = {"id": f"prm-{ex.seed:09d}-{records}", "image": image, "conversations": conv}
                f.write(json.dumps(record) + "\n")
                g.write(json.dumps({"image": image, "question": question, "answer": ex.answer, "qtype": ex.qtype,
                                    "response": "\n\n".join(s["step"] for s in steps),
                                    "steps_with_score": steps}) + "\n")
                labels.update(c["value"] for c in conv if c["from"] == "gpt")
                records += 1
    meta = {"tiny_prm": {"root": str(images), "annotation": str(out / "prm.jsonl"), "data_augment": False,
                         "max_dynamic_patch": MAX_DYNAMIC_PATCH, "repeat_time": 1, "length": records}}
    (out / "prm_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    correct = [s[-1]["score"] for per in scored for s in per]
    stats = {"policy": str(policy), "questions": n, "seed": seed, "records": records, "steps": sum(labels.values()),
             "plus_share": labels["+"] / max(1, sum(labels.values())), "responses": responses, "words": words,
             "mc": mc, "skipped_empty_step": empty_steps, "step_response_accuracy": sum(correct) / max(1, len(correct)),
             "seconds": round(time.perf_counter() - start, 1)}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny PRM's training data (Monte Carlo step labels).")
    parser.add_argument("--policy", required=True, help="the policy checkpoint that answers step by step")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, default=600, help="training-split questions")
    parser.add_argument("--seed", type=int, default=200_000, help="first example seed")
    parser.add_argument("--responses", type=int, default=4, help="step-wise responses sampled per question")
    parser.add_argument("--words", type=int, default=2, help="one-word responses sampled per question")
    parser.add_argument("--mc", type=int, default=4, help="Monte Carlo continuations per step prefix")
    parser.add_argument("--max-batch", type=int, default=96, help="requests decoded together")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stats = build(args.policy, args.out, args.n, args.seed, args.responses, args.words, args.mc, args.max_batch)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
