"""First-word exact match: the shapes task's scoring rule."""

from __future__ import annotations

import pytest

from internvl.eval.metrics import first_word, first_word_match, mean


@pytest.mark.parametrize("text, word", [
    ("3", "3"), ("Yes.", "yes"), ("  3, because there are three", "3"), ("**Blue**", "blue"), ("YES!", "yes"),
    ("\n2\n", "2"), ("Triangle.", "triangle"), ("red-ish", "red-ish"),
    ("", ""), ("   ", ""), ("...", ""), ("“green”", "green"), ("1。", "1"),
])
def test_first_word(text, word):
    assert first_word(text) == word


@pytest.mark.parametrize("prediction, answer, score", [
    ("3", "3", 1.0), ("3 circles", "3", 1.0), ("Yes, there is.", "yes", 1.0), ("Blue", "blue", 1.0),
    ("2.", "2", 1.0), ("The answer is 3", "3", 0.0), ("three", "3", 0.0), ("30", "3", 0.0),
    ("no", "yes", 0.0), ("", "3", 0.0), ("", "", 0.0), ("red-ish", "red", 0.0), ("squares", "square", 0.0),
])
def test_first_word_match(prediction, answer, score):
    assert first_word_match(prediction, answer) == score


def test_mean():
    assert mean([1.0, 0.0, 1.0, 1.0]) == 0.75 and mean([]) == 0.0
