"""Answer scoring: the shapes task's first-word match, and the official per-question VQA metrics.

The benchmark metrics follow docs/mpo-prm-eval.md section 3 exactly (VLMEvalKit's `vqa_eval.py` and
InternVL's `eval/vqa/` scripts), quirks included, so a predictions file scores the same here as there:
- `vqa_accuracy`: mean over the reference answers i of min(1, #{j != i : answer_j == prediction} / 3),
  after `normalize.py`. A single reference answer therefore always scores 0 (no other annotator agrees).
- `anls`: 1 - the smallest normalized Levenshtein distance to a reference, 0 below the 0.5 threshold; the
  distance is taken between lowercased, space-collapsed strings but divided by the longer *raw* length.
- `relaxed_accuracy`: ChartQA's 5% numeric tolerance ("12%" is 0.12; a zero target falls back to string
  equality), best over the references.
- `exact_match`: stripped, lowercased string equality, best over the references.
Each returns the question's score in [0, 1]. No generation and no file I/O here.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Sequence

from .normalize import normalize_internvl, normalize_vlmevalkit

_PUNCTUATION = string.punctuation + "“”‘’«»。，、！？：；"  # ASCII plus common typographic / CJK marks


def first_word(text: str) -> str:
    """The first whitespace-separated word of `text`, lowercased, with punctuation stripped from both ends.

    "Yes." -> "yes", "  3, because" -> "3", "**Blue**" -> "blue", "" -> "".
    """
    words = text.split()
    return words[0].strip(_PUNCTUATION).lower() if words else ""


def first_word_match(prediction: str, answer: str) -> float:
    """1.0 when the prediction's first word equals the answer's (both normalized by `first_word`), else 0.0.

    An empty prediction never matches, even an empty answer.
    """
    got = first_word(prediction)
    return float(bool(got) and got == first_word(answer))


def mean(scores: Iterable[float]) -> float:
    """Average of scores in [0, 1]; 0.0 for no scores."""
    values = list(scores)
    return sum(values) / len(values) if values else 0.0


# ---------------------------------------------------------------------------------------- VQA accuracy
NORMALIZERS: dict[str, Callable[[str], str]] = {"vlmevalkit": normalize_vlmevalkit, "internvl": normalize_internvl}


def vqa_accuracy(prediction: str, answers: Sequence[str], normalizer: str = "vlmevalkit") -> float:
    """VQA accuracy against the human answers (10 in VQAv2 / TextVQA), averaged over leave-one-out subsets."""
    norm = NORMALIZERS[normalizer]
    refs = [norm(a) for a in answers]
    pred = norm(prediction)
    matches = [min(1.0, sum(r == pred for j, r in enumerate(refs) if j != i) / 3) for i in range(len(refs))]
    return mean(matches)


# ------------------------------------------------------------------------------------------------ ANLS
def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) > len(b):
        a, b = b, a
    row = list(range(len(a) + 1))
    for i, cb in enumerate(b, 1):
        prev, row[0] = row[0], i
        for j, ca in enumerate(a, 1):
            prev, row[j] = row[j], prev if ca == cb else 1 + min(prev, row[j], row[j - 1])
    return row[-1]


def normalized_distance(answer: str, prediction: str) -> float:
    """ANLS's per-reference distance: Levenshtein over lowercased, whitespace-collapsed strings, divided by
    the longer of the two raw strings' uppercase lengths (0 when both are empty)."""
    dist = levenshtein(" ".join(answer.strip().lower().split()), " ".join(prediction.strip().lower().split()))
    length = max(len(answer.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else dist / length


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one question (DocVQA / InfoVQA)."""
    score = 1 - min(normalized_distance(a, prediction) for a in answers)
    return 0.0 if score < threshold else score


# ----------------------------------------------------------------------------------- relaxed accuracy
def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """pix2struct's rule: numbers within 5% of a non-zero target, anything else by case-insensitive equality."""
    pred, tgt = _to_float(prediction), _to_float(target)
    if pred is not None and tgt:
        return abs(pred - tgt) / abs(tgt) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str], internvl: bool = False) -> float:
    """ChartQA relaxed accuracy, best over the references. VLMEvalKit measures the tolerance relative to the
    reference; InternVL's `evaluate_vqa.py` passes the prediction as the target (`internvl=True`)."""
    pred = prediction.strip()
    if internvl:
        return float(max(relaxed_correctness(pred, a) for a in answers))
    return float(max(relaxed_correctness(a, pred) for a in answers))


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when some reference equals the prediction, both stripped and lowercased."""
    pred = prediction.strip().lower()
    return float(any(a.strip().lower() == pred for a in answers))
