"""`internvl eval run` and `internvl eval score`: benchmark files -> predictions -> scores -> reports.

`run` reads and checks every --data file first (so a malformed file fails before any model work), then per
file: builds the official prompts, generates through one engine with continuous batching (or a given
`Generate`, e.g. Best-of-N), appends each answer to `OUT/NAME/predictions.jsonl` as it finishes, and scores.
A second run into the same OUT resumes: rows already answered are not generated again. `run.json` beside
the log records what produced it (data file, rows, model, prompt settings); resuming with different ones is
an error unless --overwrite. Per file it also writes `predictions.tsv` (VLMEvalKit's format: the data columns
without images, plus `prediction`) and `scored.tsv` (what was read from each answer and its score); per run
`summary.json`, `categories.csv` and `scores.png` (`results.py`).

`score` does the scoring alone on an existing predictions file (ours or VLMEvalKit's), without a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..tiny import DEFAULT_MODEL
from .generate import Generate, build_request, engine_generate
from .judge import Judge
from .predictions import PredictionLog, read_predictions
from .results import write_reports
from .scoring import KINDS, METRICS, DatasetScore, ScoreOptions, infer_kind, score
from .tsv import Benchmark, read_benchmark, write_tsv

logger = logging.getLogger(__name__)
PROMPT_VERSION = 1  # bump when prompts change, so old logs are not resumed into a new run
SCORED_COLUMNS = ["index", "g_index", "question", "answer", "prediction", "extracted", "decided_by", "score",
                  "category", "l2-category", "split"]


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ScoringFlags:
    """What `run` and `score` share: how answers are read and scored."""

    kind: str | None = _opt(None, "force the kind of every --data file (default: from its columns and name)",
                            choices=KINDS)
    circular: bool = _opt(False, "score multiple-choice files circularly even when the name does not say so")
    metric: str | None = _opt(None, "force the open-question metric (default: by dataset name, as VLMEvalKit)",
                              choices=METRICS)
    judge_url: str | None = _opt(None, "OpenAI-compatible server (e.g. internvl serve) asked about the answers "
                                       "the rules cannot read; without it they count as wrong", metavar="URL")
    judge_model: str | None = _opt(None, "the judge's model id (default: the server's first)", metavar="NAME")
    judge_api_key: str | None = _opt(None, "bearer token for the judge server", metavar="KEY")
    image_root: str | None = _opt(None, "directory relative image_path values start from (default: the TSV's)",
                                  metavar="DIR")
    label: str | None = _opt(None, "name of this run in charts and compare (default: the model's name)")

    def score_options(self, kind: str | None = None) -> ScoreOptions:
        judge = None
        if self.judge_url:
            judge = Judge(self.judge_url, self.judge_model, self.judge_api_key)
            judge.connect()
        return ScoreOptions(kind=kind or self.kind, circular=self.circular, metric=self.metric, judge=judge)


@dataclass
class _RunFiles:
    data: list[str] = _opt(None, "a VLMEvalKit TSV file (repeat for several)", required=True, action="append",
                           metavar="FILE.tsv")
    model: str = _opt(DEFAULT_MODEL, "checkpoint directory or Hub repo id (default: the shipped tiny model)",
                      metavar="DIR|REPO")
    out: str | None = _opt(None, "output directory (default: eval_results/LABEL); running again resumes there",
                           metavar="DIR")


@dataclass
class RunConfig(ScoringFlags, _RunFiles):  # fields (and flags) in order: files, scoring, generation
    max_dynamic_patch: int | None = _opt(None, "most tiles per image (default: per dataset, as VLMEvalKit's "
                                               "InternVL: 6; 12, 18 or 24 for chart, document and OCR sets)")
    max_new_tokens: int = _opt(1024, "longest answer in tokens (cut to the context)")
    batch_size: int = _opt(16, "requests decoded together (continuous batching)")
    overwrite: bool = _opt(False, "discard an earlier run's predictions in --out instead of resuming")
    progress: bool = _opt(True, "progress bar on stderr (--no-progress to hide)")
    dtype: str = _opt("auto", "auto (bf16 where the CPU has it, else fp32), bf16, fp32")
    device: str | None = _opt(None, "cpu or cuda (default: cuda when available)")

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("--data FILE.tsv is required")
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_dynamic_patch is not None and self.max_dynamic_patch < 1:
            raise ConfigError(f"--max-dynamic-patch must be >= 1, got {self.max_dynamic_patch}")


@dataclass
class _ScoreFiles:
    data: list[str] = _opt(None, "a VLMEvalKit TSV file (repeat, in the order of --predictions)", required=True,
                           action="append", metavar="FILE.tsv")
    predictions: list[str] = _opt(None, "its predictions: predictions.jsonl of eval run, or VLMEvalKit's .tsv / "
                                        ".csv / .xlsx with index and prediction columns", required=True,
                                  action="append", metavar="PRED")
    out: str | None = _opt(None, "write summary.json, categories.csv, scores.png and NAME/scored.tsv here",
                           metavar="DIR")


@dataclass
class ScoreConfig(ScoringFlags, _ScoreFiles):
    def __post_init__(self) -> None:
        if not self.data or not self.predictions or len(self.data) != len(self.predictions):
            raise ConfigError(f"give one --predictions per --data (got {len(self.data or [])} --data and "
                              f"{len(self.predictions or [])} --predictions)")


def model_label(model: str | None) -> str:
    if model is None or model == DEFAULT_MODEL:
        return "tiny"
    return Path(str(model).rstrip("/")).name or str(model)


def _public_config(cfg: Any) -> dict:
    out = asdict(cfg)
    if out.get("judge_api_key"):
        out["judge_api_key"] = "***"
    return out


def _unique_names(benches: list[Benchmark]) -> None:
    seen: dict[str, Path] = {}
    for b in benches:
        if b.name in seen:
            raise ConfigError(f"two --data files are both named {b.name!r} ({seen[b.name]} and {b.path}); their "
                              "outputs would mix: rename one")
        seen[b.name] = b.path


def write_scored(result: DatasetScore, path: Path) -> Path:
    columns = [c for c in SCORED_COLUMNS if any(c in r for r in result.records)]
    return write_tsv(path, columns, result.records)


def write_vlmevalkit_predictions(bench: Benchmark, predictions: dict[str, str], path: Path) -> Path:
    """The data (without image columns) plus `prediction`: what VLMEvalKit's evaluate reads."""
    columns = [c for c in bench.columns if c != "image"] + ["prediction"]
    rows = [{**r.fields, "prediction": predictions[r.index]} for r in bench.rows if r.index in predictions]
    return write_tsv(path, columns, rows)


# ---------------------------------------------------------------------------------------------------- run
def _fingerprint(bench: Benchmark, cfg: RunConfig, kind: str) -> dict:
    model = Path(cfg.model)
    return {"data": str(bench.path.resolve()), "rows": len(bench.rows),
            "indexes_sha1": hashlib.sha1("\n".join(r.index for r in bench.rows).encode()).hexdigest(),
            "model": str(model.resolve()) if model.exists() else cfg.model, "kind": kind,
            "max_dynamic_patch": cfg.max_dynamic_patch, "max_new_tokens": cfg.max_new_tokens,
            "prompt_version": PROMPT_VERSION}


def _prepare(directory: Path, fingerprint: dict, overwrite: bool) -> PredictionLog:
    """The dataset's prediction log, checked to belong to this run (or cleared with --overwrite)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = PredictionLog(directory / "predictions.jsonl")
    meta = directory / "run.json"
    if overwrite:
        log.path.unlink(missing_ok=True)
    elif log.path.exists() and meta.exists():
        old = json.loads(meta.read_text(encoding="utf-8"))
        changed = [k for k in fingerprint if old.get(k) != fingerprint[k]]
        if changed:
            k = changed[0]
            raise ConfigError(f"{directory} holds predictions of another run ({k}: {old.get(k)!r}, now "
                              f"{fingerprint[k]!r}); pass --overwrite to start over, or another --out")
    meta.write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")
    return log


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True)
        except ImportError:
            logger.info("install tqdm for a progress bar")
    return _NoBar()


def run(cfg: RunConfig, model=None, tokenizer=None, generate: Generate | None = None) -> dict:
    """Generate (resuming) and score every --data file; returns the summary (also written to OUT).

    Args:
        cfg: What to run.
        model, tokenizer: An already loaded model and its tokenizer (else `cfg.model` is loaded).
        generate: Answers requests (default: greedy through one engine, `engine_generate`). Best-of-N or any
            other decoding plugs in here; it receives `generate.Request`s and yields (index, answer, error).
    """
    benches = [read_benchmark(p, cfg.image_root) for p in cfg.data]
    _unique_names(benches)
    base = cfg.score_options()  # connects to the judge now: a wrong --judge-url fails before generation
    if model is None or tokenizer is None:
        from .runner import _load
        model, tokenizer = _load(cfg)
    generate = generate or engine_generate(model, tokenizer, cfg.batch_size)
    label = cfg.label or model_label(cfg.model)
    out = Path(cfg.out) if cfg.out else Path("eval_results") / label
    summary: dict = {"model": cfg.model, "label": label, "out": str(out), "config": _public_config(cfg),
                     "datasets": {}, "unscored": {}}
    for bench in benches:
        kind = base.kind or infer_kind(bench)
        directory = out / bench.name
        log = _prepare(directory, _fingerprint(bench, cfg, kind), cfg.overwrite)
        done = {k for k, r in log.load().items() if not r.get("error")}
        todo = [r for r in bench.rows if r.index not in done]
        logger.info("%s: %d rows, %d already answered, %d to generate", bench.name, len(bench.rows), len(done),
                    len(todo))
        requests = (build_request(bench, row, kind, model, tokenizer, cfg.max_dynamic_patch, cfg.max_new_tokens)
                    for row in todo)
        failures: list[str] = []
        start = time.perf_counter()
        bar = _progress(len(todo), bench.name, cfg.progress)
        try:
            with log:
                for key, text, error in generate(requests):
                    log.append(key, text, **({"error": error} if error else {}))
                    if error:
                        failures.append(error)
                    bar.update(1)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        records = log.load()
        predictions = {k: "" if r.get("error") else str(r["prediction"]) for k, r in records.items()}
        write_vlmevalkit_predictions(bench, predictions, directory / "predictions.tsv")
        counts = {"generated": len(todo), "resumed": len(done), "failed": len(failures), "failures": failures[:5],
                  "seconds": round(seconds, 2)}
        if not bench.has_answers:
            summary["unscored"][bench.name] = {"file": str(bench.path), "rows": len(bench.rows), **counts}
            continue
        options = ScoreOptions(kind=kind, circular=base.circular, metric=base.metric, judge=base.judge)
        result = score(bench, predictions, options, source=str(log.path))
        write_scored(result, directory / "scored.tsv")
        summary["datasets"][bench.name] = {**result.to_json(), **counts}
        write_reports(summary, out)  # after every dataset, so finished ones can be read while the rest runs
    if not summary["datasets"]:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# -------------------------------------------------------------------------------------------------- score
def score_files(cfg: ScoreConfig) -> dict:
    """Score existing predictions (no model); returns the summary, and writes reports when `cfg.out` is set."""
    pairs = [(read_benchmark(d, cfg.image_root, check_images=False), p) for d, p in zip(cfg.data, cfg.predictions)]
    _unique_names([b for b, _ in pairs])
    loaded = [(b, read_predictions(p), p) for b, p in pairs]
    base = cfg.score_options()
    label = cfg.label or Path(cfg.predictions[0]).resolve().parent.name
    summary: dict = {"model": None, "label": label, "config": _public_config(cfg), "datasets": {}}
    results = []
    for bench, preds, source in loaded:
        if not bench.has_answers:
            raise DataError(f"{bench.path}: no 'answer' column, so there is nothing to score against")
        result = score(bench, preds, ScoreOptions(base.kind, base.circular, base.metric, base.judge), source=source)
        summary["datasets"][bench.name] = result.to_json()
        results.append(result)
    if cfg.out:
        out = Path(cfg.out)
        write_reports(summary, out)
        for result in results:
            (out / result.name).mkdir(parents=True, exist_ok=True)
            write_scored(result, out / result.name / "scored.tsv")
        summary["out"] = str(out)
    return summary
