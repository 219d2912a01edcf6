"""`internvl eval TASK --best-of N`: accuracy against N for PRM, ORM and majority-vote selection.

Every sample gets N candidates once (candidate 0 greedy, the others sampled at temperature 0.6 / top-p 0.95
with seeds fixed per sample, each sample's N submitted to the engine together); Best-of-n for n < N uses the
first n of them, exactly what a run with N = n would generate. The verifier scores every candidate of a
sample in one batched call, per step (PRM) and as one step (ORM); majority voting needs no model. The answer
that counts is the one after `Answer:` when a candidate has one (step-wise answers), else the whole text.
The summary also gives the verifier's within-sample pairwise accuracy (`verifier_pairwise`: a right candidate
scored above a wrong one of the same sample). Writes `candidates.jsonl`, `summary.json` and `best_of_n.png`
(accuracy against n, one line per strategy, and pass@n: the share of samples with at least one right
candidate, what a perfect verifier would reach).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import ConfigError
from ..eval.answer_engine import make_engine
from ..eval.metrics import mean
from ..eval.tasks import get_task
from ..processing.image import load_question_images
from ..processing.prompt import build_query
from ..processing.templates import get_template
from . import prm as prm_lib
from .best_of_n import STRATEGIES, Verifier, candidate_params, extract_answer, majority_index, run_groups
from .report import curve_chart

log = logging.getLogger(__name__)
SEEDS_PER_SAMPLE = 1000  # sample i's sampled candidates use seeds (seed + i) * 1000 + 1 ...
STEP_MAX_NEW_TOKENS = 96


def sizes(best_of: int) -> list[int]:
    """The n of the curve: powers of two below `best_of`, and `best_of` itself."""
    out, n = [], 1
    while n < best_of:
        out.append(n)
        n *= 2
    return out + [best_of]


def pick(strategy: str, candidates: list[str], prm_scores: list[float], orm_scores: list[float], n: int) -> int:
    """The index the strategy keeps among the first n candidates."""
    if strategy == "majority":
        return majority_index([extract_answer(c) for c in candidates[:n]])
    scores = prm_scores if strategy == "prm" else orm_scores
    return prm_lib.rank(scores[:n])[0]


def pairwise_accuracy(records: list[dict], key: str) -> dict:
    """How often the verifier scores a right candidate above a wrong one of the same sample (ties count
    half), over every such pair: what Best-of-N selection depends on. A verifier can score right answers
    higher on average and still rank backwards here, when it mostly learned which questions are easy."""
    wins, pairs = 0.0, 0
    for r in records:
        scores = r.get(key)
        if not scores:
            continue
        right = [s for s, c in zip(scores, r["correct"]) if c]
        wrong = [s for s, c in zip(scores, r["correct"]) if not c]
        for a in right:
            for b in wrong:
                pairs += 1
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return {"pairs": pairs, "accuracy": wins / pairs if pairs else None}


def evaluate_best_of_n(cfg, model, tokenizer, verifier: Verifier | None = None) -> dict:
    """Run a Best-of-N evaluation (`cfg` is the runner's `EvalConfig`); returns the summary it writes."""
    task = get_task(cfg.task)
    if cfg.best_of < 1:
        raise ConfigError(f"--best-of must be >= 1, got {cfg.best_of}")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown Best-of-N strategy {cfg.strategy!r}; known: {', '.join(STRATEGIES)}")
    if cfg.step_by_step and not hasattr(task, "step_prompt"):
        raise ConfigError(f"task {task.name!r} has no step-wise prompt (--step-by-step)")
    samples = list(task.examples(cfg.n, cfg.seed))
    if verifier is None and cfg.best_of > 1:
        verifier = Verifier.load(cfg.prm, dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)
    max_new = cfg.max_new_tokens or (STEP_MAX_NEW_TOKENS if cfg.step_by_step else 8)
    prompts = [task.step_prompt(s) if cfg.step_by_step else task.prompt(s) for s in samples]
    mcfg, template = model.config, get_template(model.config.template)

    def groups():
        for i, (sample, prompt) in enumerate(zip(samples, prompts)):
            tiles = load_question_images(sample.load_images(), mcfg, cfg.max_tiles)
            query = build_query(template, prompt, None, [t.shape[0] for t in tiles], mcfg.num_image_token,
                                mcfg.system_message)
            params = candidate_params(cfg.best_of, max_new, seed=(cfg.seed + i) * SEEDS_PER_SAMPLE)
            yield tokenizer(query, return_tensors=None)["input_ids"], (torch.cat(tiles) if tiles else None), params

    start = time.perf_counter()
    engine = make_engine(model, tokenizer, max_batch=max(cfg.batch_size, cfg.best_of))
    candidates = run_groups(engine, groups())
    generate_s = time.perf_counter() - start
    records = []
    for i, (sample, prompt, cands) in enumerate(zip(samples, prompts, candidates)):
        answers = [extract_answer(c) for c in cands]
        record = {"id": sample.id, "category": sample.category, "question": prompt, "answer": sample.answer,
                  "candidates": cands, "answers": answers, "correct": [task.score(a, sample) for a in answers]}
        if verifier is not None:
            tiles = load_question_images(sample.load_images(), verifier.model.config, cfg.max_tiles)
            pixels, patches = (torch.cat(tiles), [t.shape[0] for t in tiles]) if tiles else (None, [])
            steps = verifier.step_scores(prompt, cands, pixels, patches)
            orm = verifier.step_scores(prompt, cands, pixels, patches, orm=True)
            record.update(prm_step_scores=steps, prm_scores=[prm_lib.aggregate(s, verifier.aggregation) for s in steps],
                          orm_scores=[s[0] for s in orm])
        records.append(record)
        if (i + 1) % 100 == 0:
            log.info("%s best-of-%d: %d/%d scored", task.name, cfg.best_of, i + 1, len(samples))
    seconds = time.perf_counter() - start

    ns = sizes(cfg.best_of)
    strategies = list(STRATEGIES) if verifier is not None else ["majority"]
    curve: dict[str, list[float]] = {"n": ns}
    for strategy in strategies:
        curve[strategy] = [mean(r["correct"][pick(strategy, r["candidates"], r.get("prm_scores", []),
                                                  r.get("orm_scores", []), n)] for r in records) for n in ns]
    curve["pass"] = [mean(float(any(r["correct"][:n])) for r in records) for n in ns]
    curve["sampled"] = [mean(mean(r["correct"][1:n]) for r in records) if n > 1 else None for n in ns]
    headline = cfg.strategy if cfg.strategy in curve else "majority"
    per_category: dict[str, dict] = {}
    for r in records:
        entry = per_category.setdefault(r["category"], {"n": 0, **{s: [] for s in ("greedy", *strategies)}})
        entry["n"] += 1
        entry["greedy"].append(r["correct"][0])
        for strategy in strategies:
            entry[strategy].append(r["correct"][pick(strategy, r["candidates"], r.get("prm_scores", []),
                                                     r.get("orm_scores", []), cfg.best_of)])
    per_category = {c: {k: (v if k == "n" else mean(v)) for k, v in e.items()} for c, e in sorted(per_category.items())}
    pairwise = ({s: pairwise_accuracy(records, f"{s}_scores") for s in ("prm", "orm")}
                if verifier is not None else None)
    summary = {"task": task.name, "model": cfg.model, "prm": cfg.prm if verifier is not None else None,
               "n": len(samples), "seed": cfg.seed, "best_of": cfg.best_of, "strategy": headline,
               "step_by_step": cfg.step_by_step, "greedy_accuracy": curve[headline][0],
               "accuracy": curve[headline][-1], "curve": curve, "per_category": per_category,
               "verifier_pairwise": pairwise,
               "seconds": round(seconds, 2), "generate_seconds": round(generate_s, 2), "config": asdict(cfg)}
    out = Path(cfg.out) if cfg.out else Path("eval_results") / f"{task.name}-best-of-{cfg.best_of}"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "candidates.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    curve_chart(summary, out / "best_of_n.png")
    summary["out"] = str(out)
    return summary
