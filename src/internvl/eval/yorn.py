"""Yes/No benchmarks: answer extraction and the MME, POPE and HallusionBench ratings.

As VLMEvalKit does it (`vlmeval/dataset/utils/yorn.py`, `image_yorn.py`; docs/mpo-prm-eval.md 3.5):
- `extract_yes_no`: lowercase, official punctuation handling, split into words; "yes" without "no" is
  Yes, "no" without "yes" is No, anything else Unknown (left to the judge when one is given).
- A question scores 1 when the extraction equals the reference answer.
- MME: per category, acc = % of questions right, acc+ = % of images whose questions are all right (MME asks
  two per image), score = acc + acc+; perception and reasoning are sums of category scores.
- POPE: Yes is the positive class; F1 (the headline), accuracy, precision, recall, and the share of Yes
  answers; a row whose category lists several (comma-separated) counts once in each, the totals included.
- HallusionBench: aAcc = % of questions right; fAcc = % of (l2-category, set, figure) groups all right;
  qAcc = % of (l2-category, set, question) groups all right; set, figure and question ids are the 4th,
  5th and 6th `_`-separated parts of the row's index.
Every rating returns table rows (`table.py`): `level`, `name`, `n` and the metric values in percent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..errors import DataError
from .normalize import process_punctuation
from .table import by_levels, groups, pct

YES, NO, UNKNOWN = "Yes", "No", "Unknown"
MME_PERCEPTION = ("OCR", "artwork", "celebrity", "color", "count", "existence", "landmark", "position", "posters",
                  "scene")
MME_REASONING = ("code_reasoning", "commonsense_reasoning", "numerical_calculation", "text_translation")


def extract_yes_no(prediction: str) -> str:
    """'Yes', 'No' or 'Unknown' (VLMEvalKit's `YOrN_Extraction`)."""
    words = process_punctuation(prediction.lower()).split()
    if "yes" in words and "no" not in words:
        return YES
    if "no" in words and "yes" not in words:
        return NO
    return UNKNOWN


def canonical_answer(answer: str) -> str:
    """A reference answer as 'Yes' / 'No' whatever its case ("yes", "YES "); other text unchanged.

    VLMEvalKit compares case-sensitively, so its files say "Yes" / "No"; accepting any case keeps a
    hand-made file with "yes" from scoring zero.
    """
    low = answer.strip().lower()
    return {"yes": YES, "no": NO}.get(low, answer)


def default_rating(records: Sequence[dict]) -> list[dict]:
    """Accuracy overall, per category and per l2-category; the share of Yes answers beside it."""
    return by_levels(records, lambda rs: {"acc": pct([r["score"] for r in rs]),
                                          "yes_ratio": pct([r["extracted"] == YES for r in rs])})


def mme_rating(records: Sequence[dict]) -> list[dict]:
    """acc, acc+ and score per category (images told apart by `image_key`), then perception and reasoning."""
    rows = []
    scores = {}
    for name, group in groups(records, "category"):
        per_image: dict[str, list[float]] = defaultdict(list)
        for r in group:
            per_image[r["image_key"]].append(r["score"])
        acc = pct([r["score"] for r in group])
        acc_plus = pct([float(all(v)) for v in per_image.values()])
        scores[name] = acc + acc_plus
        rows.append({"level": "category", "name": name, "n": len(group), "acc": acc, "acc+": acc_plus,
                     "score": acc + acc_plus})
    totals = []
    for name, members in (("perception", MME_PERCEPTION), ("reasoning", MME_REASONING)):
        present = [c for c in members if c in scores]
        if present:
            totals.append({"level": "overall", "name": name, "n": sum(r["n"] for r in rows if r["name"] in present),
                           "score": sum(scores[c] for c in present), "categories": len(present)})
    overall = {"level": "overall", "name": "Overall", "n": len(records), "acc": pct([r["score"] for r in records])}
    return [overall, *totals, *rows]


def _pope_metrics(records: Sequence[dict]) -> dict:
    truth = [r["answer"] == YES for r in records]
    said = [r["extracted"] == YES for r in records]
    tp = sum(t and s for t, s in zip(truth, said))
    fp = sum(s and not t for t, s in zip(truth, said))
    fn = sum(t and not s for t, s in zip(truth, said))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"F1": 100 * f1, "acc": pct([r["score"] for r in records]), "precision": 100 * precision,
            "recall": 100 * recall, "yes_ratio": pct(said)}


def pope_rating(records: Sequence[dict]) -> list[dict]:
    """F1 with Yes positive, accuracy, precision, recall, yes-ratio; overall and per category."""
    exploded = [{**r, "category": c} for r in records
                for c in (r.get("category", "").split(",") if r.get("category", "") != "" else [""])]
    return by_levels(exploded, _pope_metrics, levels=("category",))


def hallusion_rating(records: Sequence[dict]) -> list[dict]:
    """aAcc, fAcc and qAcc; overall, per category and per l2-category."""
    ids = []
    for r in records:
        parts = str(r["index"]).split("_")
        if len(parts) < 6:
            raise DataError(f"{r['where']}, column 'index': HallusionBench indexes look like "
                            f"'subset_category_subcategory_set_figure_question' (six '_'-separated parts), "
                            f"got {r['index']!r}")
        ids.append((r, parts[3], parts[4], parts[5]))

    def metrics(rs: Sequence[dict]) -> dict:
        keep = {id(r) for r in rs}
        mine = [x for x in ids if id(x[0]) in keep]
        figures: dict[tuple, list[float]] = defaultdict(list)
        questions: dict[tuple, list[float]] = defaultdict(list)
        for r, set_id, figure_id, question_id in mine:
            figures[(r.get("l2-category", ""), set_id, figure_id)].append(r["score"])
            questions[(r.get("l2-category", ""), set_id, question_id)].append(r["score"])
        return {"aAcc": pct([r["score"] for r in rs]), "fAcc": pct([float(all(v)) for v in figures.values()]),
                "qAcc": pct([float(all(v)) for v in questions.values()])}

    return by_levels(records, metrics, levels=("category", "l2-category"))
