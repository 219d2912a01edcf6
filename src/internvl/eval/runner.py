"""The evaluation runner: a task's samples -> batched greedy generation through one engine -> scores.

One `Engine` serves the whole run: samples are tiled and tokenized lazily and submitted while the engine
runs (continuous batching, at most `batch_size` decoding together), so memory holds a batch, not the
dataset. The blind baseline repeats the run with every image replaced by a white one of the same size
(so tiling and prompt length are unchanged): the gap between the two is what the model learned from
pixels rather than from question priors. Writes `predictions.jsonl`, `summary.json` and `accuracy.png`
(see `report.py`); prints nothing but a tqdm progress bar on stderr (the CLI prints `report.format_table`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from PIL import Image

from ..argtypes import device, non_negative_int, positive_int
from ..engine.sampling import SamplingParams
from ..errors import GenerationError
from ..models.internvl import InternVL
from ..processing.image import load_question_images
from ..processing.prompt import build_query
from ..processing.templates import get_template
from ..processing.tokenizer import Tokenizer
from ..tiny import DEFAULT_MODEL, DEFAULT_PRM  # the shipped tiny model and PRM
from . import report
from .answer_engine import make_engine
from .metrics import mean
from .tasks import Sample, Task, get_task

logger = logging.getLogger(__name__)

BLANK = (255, 255, 255)  # the blind baseline's image color


@dataclass
class EvalConfig:
    task: str = "shapes"  # registered task name (eval/tasks.py)
    model: str | None = DEFAULT_MODEL  # checkpoint directory or Hub repo id
    n: int = 500  # samples
    seed: int = 0  # first sample seed (the task maps it to its held-out range)
    out: str | None = None  # output directory; default eval_results/<task>
    batch_size: int = 16  # requests decoded together
    max_tiles: int | None = None  # most tiles per image; default the model's max_dynamic_patch
    blind: bool = True  # also run the blind baseline (blank images)
    max_new_tokens: int | None = None  # default 8 (one-word answers; greedy), 96 with step_by_step
    dtype: str = "auto"
    device: str | None = None
    progress: bool = True  # a tqdm bar on stderr
    best_of: int = 1  # > 1: Best-of-N (internvl.tts.evaluate), the accuracy curve for prm / orm / majority
    strategy: str = "prm"  # the Best-of-N strategy reported as the accuracy
    prm: str = DEFAULT_PRM  # the process reward model of --best-of
    step_by_step: bool = False  # ask for step-wise answers (the task's step prompt)
    vir: str = "auto"  # InternVL3.5-Flash router: auto, off, always


def add_arguments(parser: argparse.ArgumentParser, task: bool = True) -> None:
    """The `internvl eval TASK` options (one per EvalConfig field); `task=False` leaves out the positional
    task name, for a parser that is already the task's own subcommand."""
    from .tasks import TASKS
    if task:
        parser.add_argument("task", choices=sorted(TASKS), help="evaluation task")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="checkpoint directory or Hub repo id (default: the shipped tiny model)")
    parser.add_argument("--n", type=positive_int, default=500, help="number of held-out samples")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="first sample seed (within the task's held-out range)")
    parser.add_argument("--out", default=None, help="output directory (default eval_results/TASK)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="requests decoded together")
    parser.add_argument("--max-tiles", type=positive_int, default=None,
                        help="most tiles per image (default: the config's)")
    parser.add_argument("--blind", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the blind baseline (every image replaced by a blank one)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="default 8, or 96 with --step-by-step")
    parser.add_argument("--best-of", type=positive_int, default=1, metavar="N",
                        help="Best-of-N: N candidates per question (1 greedy + N-1 sampled); reports accuracy "
                             "against N = 1, 2, 4, ..., N for the prm, orm and majority strategies")
    parser.add_argument("--strategy", choices=["prm", "orm", "majority"], default="prm",
                        help="the Best-of-N strategy reported as the accuracy")
    parser.add_argument("--prm", default=DEFAULT_PRM, help="process reward model for --best-of "
                                                          "(default: the shipped tiny PRM)")
    parser.add_argument("--step-by-step", action="store_true",
                        help="ask for step-wise answers (the question + 'Answer step by step.')")
    from ..runtime import DTYPES
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="auto (bf16 where the CPU has it, else fp32), bf16, fp32")
    parser.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar on stderr")
    from ..cli import add_vir_argument
    add_vir_argument(parser)


def from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig)})


def _requests(model: InternVL, tokenizer: Tokenizer, task: Task, samples: Sequence[Sample], max_tiles: int | None,
              blind: bool) -> Iterator[tuple[list[int], torch.Tensor | None]]:
    """(prompt ids, tiles) per sample, built only when the engine has room for it."""
    cfg = model.config
    template = get_template(cfg.template)
    for sample in samples:
        images = sample.load_images()
        if blind:
            images = [Image.new("RGB", img.size, BLANK) for img in images]
        tiles = load_question_images(images, cfg, max_tiles)
        query = build_query(template, task.prompt(sample), None, [t.shape[0] for t in tiles], cfg.num_image_token,
                            cfg.system_message)
        yield tokenizer(query, return_tensors=None)["input_ids"], (torch.cat(tiles) if tiles else None)


class _Quiet:
    """Stands in for a tqdm bar where tqdm is not installed (an optional dependency): logs every 100."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0

    def update(self, k: int) -> None:
        if (self.n + k) // 100 > self.n // 100:
            logger.info("%s: %d/%d answered", self.desc, self.n + k, self.total)
        self.n += k

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _Quiet(total, desc)
    return tqdm(total=total, desc=desc, unit="q", dynamic_ncols=True, leave=False, disable=not enabled)


def generate_answers(model: InternVL, tokenizer: Tokenizer, task: Task, samples: Sequence[Sample],
                     batch_size: int = 16, max_tiles: int | None = None, max_new_tokens: int = 8,
                     blind: bool = False, progress: bool = False, vir: str = "auto",
                     stats: dict | None = None) -> list[str]:
    """Greedy answers to every sample, in order, through one engine.

    `stats`, when given, receives the run's totals: `tiles`, `compressed_tiles` (the Flash router's) and
    `image_tokens` (what the LLM read).

    Raises:
        GenerationError: a sample failed in the engine (an evaluation never scores a failure as an answer).
    """
    engine = make_engine(model, tokenizer, batch_size, vir=vir)
    totals = {"tiles": 0, "compressed_tiles": 0, "image_tokens": 0}
    params = SamplingParams(max_new_tokens=max_new_tokens)
    requests = enumerate(_requests(model, tokenizer, task, samples, max_tiles, blind))
    answers: list[str | None] = [None] * len(samples)
    active = []  # (sample index, sequence)
    exhausted = False
    with _progress(len(samples), task.name + (" (blind)" if blind else ""), progress) as bar:
        while True:
            while not exhausted and len(engine.waiting) < batch_size:  # keep the free slots fed
                item = next(requests, None)
                if item is None:
                    exhausted = True
                else:
                    i, (ids, pixel_values) = item
                    active.append((i, engine.submit(ids, pixel_values, params)))
                    totals["tiles"] += 0 if pixel_values is None else pixel_values.shape[0]
            if not engine.has_work():
                break
            engine.step()
            done = [a for a in active if a[1].finished]
            for i, seq in done:
                if seq.error is not None:
                    raise GenerationError(f"sample {i} failed in the engine: {seq.error}")
                answers[i] = seq.text.strip()
                totals["compressed_tiles"] += seq.compressed_tiles
                totals["image_tokens"] += seq.image_tokens
            active = [a for a in active if not a[1].finished]
            bar.update(len(done))
    if stats is not None:
        stats.update(totals)
    return [a or "" for a in answers]


def summarize(samples: Sequence[Sample], scores: Sequence[float]) -> dict:
    """Overall and per-category accuracy."""
    categories: dict[str, list[float]] = {}
    for sample, score in zip(samples, scores):
        categories.setdefault(sample.category, []).append(score)
    return {"accuracy": mean(scores),
            "per_category": {c: {"n": len(v), "accuracy": mean(v)} for c, v in sorted(categories.items())}}


def evaluate(cfg: EvalConfig, model: InternVL | None = None, tokenizer: Tokenizer | None = None) -> dict:
    """Run one evaluation and write its files; returns the summary (also written as summary.json).

    Args:
        cfg: What to run. `cfg.model` is loaded unless `model` and `tokenizer` are given.
        model: An already loaded model (eval mode), e.g. in tests.
        tokenizer: Its tokenizer.
    """
    task = get_task(cfg.task)
    if model is None or tokenizer is None:
        model, tokenizer = _load(cfg)
    if cfg.best_of != 1 or cfg.step_by_step:
        from ..tts.evaluate import evaluate_best_of_n
        return evaluate_best_of_n(cfg, model, tokenizer)
    samples = list(task.examples(cfg.n, cfg.seed))
    kw = dict(batch_size=cfg.batch_size, max_tiles=cfg.max_tiles, max_new_tokens=cfg.max_new_tokens or 8,
              progress=cfg.progress, vir=cfg.vir)
    start = time.perf_counter()
    stats: dict = {}
    answers = generate_answers(model, tokenizer, task, samples, stats=stats, **kw)
    seconds = time.perf_counter() - start
    scores = [task.score(a, s) for a, s in zip(answers, samples)]
    # bf16 and fp32 greedy answers differ on a few questions, and `--dtype auto` means bf16 only on CPUs with
    # native bf16: the numbers say which precision (and how many threads) produced them
    param = next(model.parameters())
    summary = {"task": task.name, "model": cfg.model, "n": len(samples), "seed": cfg.seed,
               "dtype": str(param.dtype).removeprefix("torch."), "device": str(param.device),
               "threads": torch.get_num_threads(),
               **summarize(samples, scores), "seconds": round(seconds, 2),
               "seconds_per_question": round(seconds / max(len(samples), 1), 4), "vir": cfg.vir,
               "visual_tokens_per_question": stats["image_tokens"] / max(len(samples), 1),
               "tiles": stats["tiles"], "compressed_tiles": stats["compressed_tiles"], "config": asdict(cfg)}
    records = [{"id": s.id, "category": s.category, "question": s.question, "answer": s.answer,
                "prediction": a, "score": sc} for s, a, sc in zip(samples, answers, scores)]
    if cfg.blind:
        blind_answers = generate_answers(model, tokenizer, task, samples, blind=True, **kw)
        blind_scores = [task.score(a, s) for a, s in zip(blind_answers, samples)]
        summary["blind"] = summarize(samples, blind_scores)
        summary["gain_over_blind"] = summary["accuracy"] - summary["blind"]["accuracy"]
        for r, a, sc in zip(records, blind_answers, blind_scores):
            r.update(blind_prediction=a, blind_score=sc)
    out = Path(cfg.out) if cfg.out else Path("eval_results") / task.name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report.bar_chart(summary, out / "accuracy.png")
    summary["out"] = str(out)
    return summary


def _load(cfg: EvalConfig) -> tuple[InternVL, Tokenizer]:
    from ..chat import from_pretrained
    from ..errors import ConfigError
    from ..runtime import default_device, resolve_dtype
    if cfg.model is None:
        raise ConfigError("no model to evaluate: pass --model DIR_OR_REPO")
    device = cfg.device or default_device()
    return from_pretrained(cfg.model, dtype=resolve_dtype(cfg.dtype, device), device=device)
