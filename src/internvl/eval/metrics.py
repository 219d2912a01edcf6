"""Answer scoring for evaluation tasks: normalization and exact-match metrics. Spec section 9.

Only what the registered tasks use so far: the first-word exact match of the shapes task (one-word
answers). VQA accuracy, ANLS, relaxed accuracy and multiple choice join here as tasks that need them arrive.
No generation and no file I/O here.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

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
