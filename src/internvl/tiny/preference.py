"""The preference-data engine: MMPR's idea on the tiny world. A model answers each training question K times
(sampling, temperature > 0, batched through the generation engine); the world's truth labels every answer;
a question with both right and wrong answers gives MMPR-format pairs (chosen = a right answer, rejected = a
wrong one), for `internvl train --method mpo`.

For each question: the right answers' most frequent text is the chosen response; the wrong answers' distinct
texts, most frequent first, are the rejected responses of up to `pairs_per_question` pairs (the model's
likeliest mistakes first). A question the model always gets right, or always wrong, gives no pair: it is
skipped and counted, per question type, as MMPR's pipeline discards prompts without a contrast. Empty answers
(the model stops at once) cannot be an MMPR response and count as neither.

Writes under `--out`: `images/` (the PNGs of the questions that gave pairs), `shapes_pairs.jsonl`
(`{"id", "image", "question", "chosen", "rejected"}`, the official MMPR line), `shapes_pairs_meta.json` (the
meta file, `max_dynamic_patch` 6 as for SFT) and `summary.json` (counts per question type and the sampled
answers' accuracy).

    python -m internvl.tiny.preference --model DIR --out DIR --n 3000 --k 8 [--temperature 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..engine.sampling import SamplingParams
from ..errors import ConfigError, InternVLError
from ..eval.answer_engine import make_engine
from ..eval.metrics import first_word_match
from ..processing.image import load_question_images
from ..processing.prompt import build_query
from ..processing.templates import get_template
from . import DEFAULT_MODEL
from .dataset import MAX_DYNAMIC_PATCH
from .world import QUESTION_TYPES, Example, examples

log = logging.getLogger(__name__)
NAME = "shapes_pairs"


@dataclass
class PreferenceConfig:
    model: str = DEFAULT_MODEL  # the model that answers (the policy MPO will start from)
    out: str = "scratch/tiny-pairs"
    n: int = 3000  # training questions asked
    seed: int = 0  # first training example seed
    k: int = 8  # answers sampled per question
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8
    pairs_per_question: int = 1
    batch_size: int = 64  # requests decoded together
    max_tiles: int | None = None  # default: the model's max_dynamic_patch
    dtype: str = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.k < 2:
            raise ConfigError(f"need n >= 1 questions and k >= 2 answers each, got n={self.n}, k={self.k}")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0 (greedy answers are all the same), got {self.temperature}")
        if self.pairs_per_question < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--pairs-per-question, --batch-size and --max-new-tokens must be >= 1")


def sample_answers(model, tokenizer, questions: Sequence[Example], k: int, params: SamplingParams, seed: int,
                   batch_size: int = 64, max_tiles: int | None = None) -> list[list[str]]:
    """K sampled answers to every question, in order, through one engine (continuous batching).

    Answer j of question i is sampled with seed `seed * 1_000_003 + i * k + j`, so a rerun repeats them.
    """
    engine = make_engine(model, tokenizer, batch_size)
    answers: list[list[str | None]] = [[None] * k for _ in questions]
    active, pending = [], _requests(model, tokenizer, questions, max_tiles)
    exhausted, done = False, 0
    while True:
        while not exhausted and len(engine.waiting) < batch_size:  # keep the free slots fed
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            i, ids, pixel_values = item
            # the K requests share one question: encode its images once and hand every request the features
            features = None
            if pixel_values is not None:
                with torch.inference_mode():
                    features = model.extract_feature(pixel_values.to(engine.device, engine.dtype))
            for j in range(k):
                p = SamplingParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                   top_k=params.top_k, top_p=params.top_p, seed=seed * 1_000_003 + i * k + j)
                seq = engine.submit(ids, None, p)
                seq.image_features = features
                active.append((i, j, seq))
        if not engine.has_work():
            break
        engine.step()
        for i, j, seq in [a for a in active if a[2].finished]:
            answers[i][j] = seq.text.strip()
            done += 1
        active = [a for a in active if not a[2].finished]
        if done and done % (50 * k) < k:
            log.info("sampled %d/%d answers", done, len(questions) * k)
    return [[a or "" for a in row] for row in answers]


def _requests(model, tokenizer, questions: Sequence[Example], max_tiles: int | None
              ) -> Iterator[tuple[int, list[int], torch.Tensor | None]]:
    cfg = model.config
    template = get_template(cfg.template)
    for i, example in enumerate(questions):
        tiles = load_question_images(example.images(), cfg, max_tiles)
        query = build_query(template, example.prompt, None, [t.shape[0] for t in tiles], cfg.num_image_token,
                            cfg.system_message)
        yield i, tokenizer(query, return_tensors=None)["input_ids"], torch.cat(tiles) if tiles else None


def make_pairs(example: Example, answers: list[str], limit: int) -> tuple[list[tuple[str, str]], str]:
    """(pairs of (chosen, rejected), outcome) for one question's sampled answers; outcome is "contrast" (both
    kinds of answer), "always_right" or "always_wrong"."""
    right = Counter(a for a in answers if a and first_word_match(a, example.answer))
    wrong = Counter(a for a in answers if a and not first_word_match(a, example.answer))
    if not right:
        return [], "always_wrong"
    if not wrong:
        return [], "always_right"
    chosen = right.most_common(1)[0][0]
    return [(chosen, rejected) for rejected, _ in wrong.most_common(limit)], "contrast"


def build(cfg: PreferenceConfig, model=None, tokenizer=None) -> dict:
    """Sample, label and write the pairs; returns the summary (also written as summary.json)."""
    if model is None or tokenizer is None:
        from ..chat import from_pretrained
        from ..runtime import default_device, resolve_dtype
        device = cfg.device or default_device()
        model, tokenizer = from_pretrained(cfg.model, dtype=resolve_dtype(cfg.dtype, device), device=device)
    questions = examples("train", cfg.n, cfg.seed)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    start = time.perf_counter()
    answers = sample_answers(model, tokenizer, questions, cfg.k, params, cfg.seed, cfg.batch_size, cfg.max_tiles)
    seconds = time.perf_counter() - start
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    per_type = {t: Counter() for t in QUESTION_TYPES}
    lines = []
    for example, sampled in zip(questions, answers):
        pairs, outcome = make_pairs(example, sampled, cfg.pairs_per_question)
        counts = per_type[example.qtype]
        counts.update({"questions": 1, outcome: 1, "pairs": len(pairs), "answers": len(sampled),
                       "right_answers": sum(first_word_match(a, example.answer) for a in sampled)})
        if not pairs:
            continue
        stem = f"train-{example.seed:09d}"
        rendered = example.images()
        names = [f"{stem}.png"] if len(rendered) == 1 else [f"{stem}-{i + 1}.png" for i in range(len(rendered))]
        for img, name in zip(rendered, names):
            img.save(out / "images" / name, compress_level=1)
        for j, (chosen, rejected) in enumerate(pairs):
            lines.append({"id": f"{stem}-{example.qtype}-{j}", "image": names[0] if len(names) == 1 else names,
                          "question": example.prompt, "chosen": chosen, "rejected": rejected})
    annotation = out / f"{NAME}.jsonl"
    _write(annotation, "".join(json.dumps(r) + "\n" for r in lines))
    meta = {NAME: {"root": str((out / "images").resolve()), "annotation": str(annotation.resolve()),
                   "data_augment": False, "max_dynamic_patch": MAX_DYNAMIC_PATCH, "repeat_time": 1,
                   "length": len(lines)}}
    _write(out / f"{NAME}_meta.json", json.dumps(meta, indent=2) + "\n")
    total = sum(per_type.values(), Counter())
    summary = {"model": cfg.model, "pairs": len(lines), "questions": cfg.n, "contrast": total["contrast"],
               "always_right": total["always_right"], "always_wrong": total["always_wrong"],
               "sampled_accuracy": total["right_answers"] / max(total["answers"], 1),
               "per_type": {t: {**{k: c[k] for k in ("questions", "contrast", "pairs", "always_right",
                                                     "always_wrong")},
                                "sampled_accuracy": c["right_answers"] / max(c["answers"], 1)}
                            for t, c in per_type.items()},
               "sampling_seconds": round(seconds, 1), "meta": str(out / f"{NAME}_meta.json"), "config": asdict(cfg)}
    _write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def format_summary(summary: dict) -> str:
    rows = [f"{'question type':<16} {'asked':>6} {'pairs':>6} {'right':>7} {'wrong':>7} {'sampled acc':>12}"]
    for t, c in summary["per_type"].items():
        rows.append(f"{t:<16} {c['questions']:>6} {c['pairs']:>6} {c['always_right']:>7} {c['always_wrong']:>7} "
                    f"{c['sampled_accuracy']:>11.1%}")
    rows.append(f"{summary['pairs']} pairs from {summary['questions']} questions ({summary['always_right']} always "
                f"right, {summary['always_wrong']} always wrong: skipped); sampling took {summary['sampling_seconds']}s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    defaults = PreferenceConfig()
    ap = argparse.ArgumentParser(description="Sample K answers per training question of the tiny world, label them "
                                             "by the world's truth, write MMPR-format preference pairs.")
    ap.add_argument("--model", default=defaults.model, help="the answering model (default: the shipped tiny model)")
    ap.add_argument("--out", default=defaults.out, help="output directory")
    ap.add_argument("--n", type=int, default=defaults.n, help="training questions to ask")
    ap.add_argument("--seed", type=int, default=defaults.seed, help="first training example seed")
    ap.add_argument("--k", type=int, default=defaults.k, help="answers sampled per question")
    ap.add_argument("--temperature", type=float, default=defaults.temperature)
    ap.add_argument("--top-p", type=float, default=defaults.top_p)
    ap.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    ap.add_argument("--pairs-per-question", type=int, default=defaults.pairs_per_question,
                    help="most pairs per question (one per distinct wrong answer, likeliest first)")
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size, help="requests decoded together")
    ap.add_argument("--max-tiles", type=int, default=None, help="most tiles per image (default: the model's)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU has it, else fp32), bf16, fp32")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = PreferenceConfig(**{k: getattr(args, k) for k in vars(defaults)})
        summary = build(cfg)
    except InternVLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(summary))
    print(f"wrote {summary['meta']}")


if __name__ == "__main__":
    main()
