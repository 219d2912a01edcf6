"""Score a benchmark's predictions: what kind of dataset it is, which metric applies, the results table.

The kind comes from the columns and the name, as VLMEvalKit decides it, unless forced:
- multiple choice (`mcq`) when the file has option columns A, B, ...; circular when the name contains
  mmbench, ccbench, circular or mmcr (or with `circular=True`): rotations are grouped by `g_index` (or
  index mod 10**6) and a question counts only when every rotation is right;
- yes/no (`yorn`) for MME, HallusionBench, POPE, AMBER, VSR, or any file whose answers are all yes/no;
  MME, POPE and HallusionBench get their own ratings (`yorn.py`);
- open questions (`vqa`) otherwise, with the metric of VLMEvalKit's dataset rules (TextVQA: VQA accuracy,
  ChartQA: relaxed accuracy, OCRVQA/GQA: exact match, DocVQA/InfoVQA: ANLS). Other files get VQA accuracy
  when they carry lists of human answers and exact match when each row has one answer. (VLMEvalKit would
  use VQA accuracy there too, which scores 0 on a single reference: nobody else agrees with it.)
Only rows with a prediction are scored, as VLMEvalKit does (a predictions file may cover part of the
data); a prediction whose index is not in the data is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import partial

from ..errors import ConfigError, DataError
from . import choice, yorn
from .judge import Judge
from .metrics import anls, exact_match, relaxed_accuracy, vqa_accuracy
from .prompts import named
from .table import by_levels, pct
from .tsv import Benchmark, Row, answers, index_key

KINDS = ("mcq", "yorn", "vqa")
METRICS = ("vqa", "vqa-internvl", "anls", "relaxed", "relaxed-internvl", "exact")
YES_NO_SETS = ("MME", "HallusionBench", "POPE", "AMBER", "VSR-zeroshot")
CIRCULAR_NAMES = ("mmbench", "ccbench", "circular", "mmcr")


@dataclass
class ScoreOptions:
    kind: str | None = None  # force mcq / yorn / vqa
    circular: bool = False  # force circular evaluation of a multiple-choice file
    metric: str | None = None  # force the open-question metric
    judge: Judge | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.metric is not None and self.metric not in METRICS:
            raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")


@dataclass
class DatasetScore:
    name: str
    file: str
    kind: str
    metric: str  # acc (mcq, yes/no) or the open-question metric
    rating: str  # which table: mcq, circular, yorn, mme, pope, hallusion, vqa
    rows: int  # questions in the file (rotations counted)
    scored: int  # rows with a prediction that were scored
    missing: int  # rows without a prediction
    table: list[dict]
    headline: dict
    chart_metric: str  # the table column the charts plot (a percentage)
    judge_calls: int = 0
    undecided: int = 0  # answers no rule (nor judge) could read, scored wrong
    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list, repr=False)  # per row, for scored.tsv

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("records")
        return out


# ------------------------------------------------------------------------------------------- inference
def has_options(bench: Benchmark) -> bool:
    return "A" in bench.columns and "B" in bench.columns and any(r.get("A") and r.get("B") for r in bench.rows)


def infer_kind(bench: Benchmark) -> str:
    if has_options(bench):
        return "mcq"
    if named(bench.name, YES_NO_SETS):
        return "yorn"
    if bench.has_answers and all(r.get("answer").strip().lower() in ("yes", "no") for r in bench.rows):
        return "yorn"
    return "vqa"


def is_circular(bench: Benchmark) -> bool:
    return any(n in bench.name.lower() for n in CIRCULAR_NAMES)


def infer_metric(bench: Benchmark) -> str:
    rules = (("TextVQA", "vqa"), ("ChartQA", "relaxed"), ("OCRVQA", "exact"), ("GQA", "exact"), ("DocVQA", "anls"),
             ("InfoVQA", "anls"))
    for name, metric in rules:
        if name in bench.name:
            return metric
    return "vqa" if any(len(answers(r)) > 1 for r in bench.rows) else "exact"


def yes_no_rating(name: str) -> str:
    for key, rating in (("MME", "mme"), ("Hallusion", "hallusion"), ("POPE", "pope")):
        if key in name:
            return rating
    return "yorn"


# --------------------------------------------------------------------------------------------- scoring
def _record(bench: Benchmark, row: Row, prediction: str) -> dict:
    return {"index": row.index, "where": bench.where(row), "question": row.get("question"),
            "answer": row.get("answer"), "prediction": prediction, "category": row.get("category"),
            "l2-category": row.get("l2-category"), "split": row.get("split"),
            "image_key": row.get("image_path") or (row.images[0].key if row.images else row.index)}


def _check_predictions(bench: Benchmark, predictions: Mapping[str, str], source: str) -> dict[str, str]:
    preds = {index_key(k): v for k, v in predictions.items()}
    known = {r.index for r in bench.rows}
    unknown = [k for k in preds if k not in known]
    if unknown:
        raise DataError(f"{source}: {len(unknown)} prediction(s) for indexes that {bench.path} does not have "
                        f"(first: {unknown[0]!r}); is it the predictions file of another dataset?")
    if not preds:
        raise DataError(f"{source}: no predictions")
    return preds


def score(bench: Benchmark, predictions: Mapping[str, str], options: ScoreOptions | None = None,
          source: str = "predictions") -> DatasetScore:
    """Score `predictions` (index -> answer text) against the benchmark's reference answers.

    Raises:
        DataError: The file has no answers, a prediction names an unknown index, or a circular file has an
            index that is not an integer.
    """
    options = options or ScoreOptions()
    if not bench.has_answers:
        raise DataError(f"{bench.path}: no 'answer' column, so there is nothing to score against (a test split?)")
    preds = _check_predictions(bench, predictions, source)
    kind = options.kind or infer_kind(bench)
    calls_before = options.judge.calls if options.judge is not None else 0
    rows = [r for r in bench.rows if r.index in preds]
    result = {"mcq": _score_mcq, "yorn": _score_yes_no, "vqa": _score_open}[kind](bench, rows, preds, options)
    result.missing = len(bench.rows) - len(rows)
    if result.missing:
        result.notes.append(f"{result.missing} of {len(bench.rows)} rows have no prediction and were not scored")
    if options.judge is not None:
        result.judge_calls = options.judge.calls - calls_before
    return result


def _score_mcq(bench: Benchmark, rows: list[Row], preds: dict[str, str], options: ScoreOptions) -> DatasetScore:
    circular = options.circular or is_circular(bench)
    judge: choice.ChoiceJudge | None = None
    if options.judge is not None:  # the random fallback is seeded by the question and answer, so reruns agree
        judge = partial(_judge_choice, options.judge)
    records: list[dict] = []
    undecided = 0
    if not circular:
        for row in rows:
            rec = _record(bench, row, preds[row.index])
            letter, how = choice.extract_choice(row.get("question"), choice.options(row.fields), rec["prediction"],
                                                judge)
            undecided += letter is None
            rec.update(extracted=letter or "", decided_by=how, score=float(letter == row.get("answer").strip()))
            records.append(rec)
        scored, main = len(records), records
    else:
        groups: dict[str, list[Row]] = {}
        for row in rows:
            groups.setdefault(_g_index(bench, row), []).append(row)
        main = []
        scored = 0
        for g, members in groups.items():
            head = next((r for r in members if r.index == g), None)
            if head is None:  # VLMEvalKit scores a group only through its original row
                continue
            members.sort(key=lambda r: int(r.index))
            group = [(r.get("question"), preds[r.index], choice.options(r.fields), r.get("answer").strip())
                     for r in members]
            hit, read = choice.circular_hit(group, judge)
            undecided += not hit and not any(x and x != ans for x, (*_, ans) in zip(read, group))
            for r, letter in zip(members, read):
                rec = _record(bench, r, preds[r.index])
                rec.update(extracted=letter or "", g_index=g, score=float(hit))
                records.append(rec)
                if r is head:
                    main.append(rec)
            scored += len(members)
    table = by_levels(main, lambda rs: {"acc": pct([r["score"] for r in rs])})
    out = DatasetScore(bench.name, str(bench.path), "mcq", "acc", "circular" if circular else "mcq", len(bench.rows),
                       scored, 0, table, {"name": "Overall", "metric": "acc", "value": table[0]["acc"]}, "acc",
                       undecided=undecided, records=records)
    if circular:
        out.notes.append(f"circular: {len(main)} questions, each right only when all its rotations are")
    return out


def _judge_choice(judge: Judge, question: str, choices: Mapping[str, str], prediction: str) -> str:
    return judge.choose(question, choices, prediction, seed=f"{question}|{prediction}")


def _g_index(bench: Benchmark, row: Row) -> str:
    if row.get("g_index"):
        return index_key(row.get("g_index"))
    try:
        return str(int(row.index) % choice.CIRCULAR_OFFSET)
    except ValueError:
        raise DataError(f"{bench.where(row)}, column 'index': circular evaluation needs integer indexes (the "
                        f"rotations of question i are i + k * {choice.CIRCULAR_OFFSET}) or a 'g_index' column; "
                        f"got {row.index!r}") from None


def _score_yes_no(bench: Benchmark, rows: list[Row], preds: dict[str, str], options: ScoreOptions) -> DatasetScore:
    records = []
    undecided = 0
    for row in rows:
        rec = _record(bench, row, preds[row.index])
        said, how = yorn.extract_yes_no(rec["prediction"]), "rule"
        if said == yorn.UNKNOWN and options.judge is not None:
            said, how = options.judge.yes_no(row.get("question"), rec["prediction"]), "judge"
        undecided += said == yorn.UNKNOWN
        answer = yorn.canonical_answer(row.get("answer"))
        rec.update(answer=answer, extracted=said, decided_by=how, score=float(said == answer))
        records.append(rec)
    rating = yes_no_rating(bench.name)
    table = {"mme": yorn.mme_rating, "pope": yorn.pope_rating, "hallusion": yorn.hallusion_rating,
             "yorn": yorn.default_rating}[rating](records)
    chart = {"mme": "acc", "pope": "F1", "hallusion": "aAcc", "yorn": "acc"}[rating]
    head = table[0]
    if rating == "mme" and len(table) > 1 and table[1]["name"] == "perception":
        headline = {"name": "perception", "metric": "score", "value": table[1]["score"]}
    else:
        headline = {"name": head["name"], "metric": chart, "value": head[chart]}
    bad = sorted({r["answer"] for r in records if r["answer"] not in (yorn.YES, yorn.NO)})
    notes = [f"reference answers other than yes/no score 0: {', '.join(map(repr, bad[:5]))}"] if bad else []
    return DatasetScore(bench.name, str(bench.path), "yorn", "acc", rating, len(bench.rows), len(records), 0, table,
                        headline, chart, undecided=undecided, notes=notes, records=records)


def question_score(metric: str, prediction: str, refs: list[str]) -> float:
    """One question's score under an open-question metric."""
    if metric in ("vqa", "vqa-internvl"):
        return vqa_accuracy(prediction, refs, "internvl" if metric == "vqa-internvl" else "vlmevalkit")
    if metric == "anls":
        return anls(prediction, refs)
    if metric in ("relaxed", "relaxed-internvl"):
        return relaxed_accuracy(prediction, refs, internvl=metric == "relaxed-internvl")
    return exact_match(prediction, refs)


def _score_open(bench: Benchmark, rows: list[Row], preds: dict[str, str], options: ScoreOptions) -> DatasetScore:
    metric = options.metric or infer_metric(bench)
    records = []
    for row in rows:
        rec = _record(bench, row, preds[row.index])
        refs = answers(row)
        rec.update(score=question_score(metric, rec["prediction"], refs))
        records.append(rec)
    table = by_levels(records, lambda rs: {metric: pct([r["score"] for r in rs])})
    notes = []
    if metric.startswith("vqa") and any(len(answers(r)) < 2 for r in rows):
        notes.append("VQA accuracy gives 0 to rows with a single reference answer (it needs several annotators); "
                     "--metric exact scores those by exact match")
    return DatasetScore(bench.name, str(bench.path), "vqa", metric, "vqa", len(bench.rows), len(records), 0, table,
                        {"name": "Overall", "metric": metric, "value": table[0][metric]}, metric, notes=notes,
                        records=records)
