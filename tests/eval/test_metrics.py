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


# ------------------------------------------------------------------------------ benchmark metrics
# Golden values worked by hand from docs/mpo-prm-eval.md section 3, then the official scorers re-typed below.
from internvl.eval.metrics import (anls, exact_match, levenshtein, normalized_distance,  # noqa: E402
                                   relaxed_accuracy, relaxed_correctness, vqa_accuracy)


@pytest.mark.parametrize("agreeing, score", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_counts_agreeing_annotators(agreeing, score):
    # k of 10 annotators said the prediction: each leave-one-out subset gives min(1, matches / 3);
    # k=1: 9 subsets see 1 match (1/3 each), the 1 that drops it sees 0 -> 3/10; k=3: 7*1 + 3*(2/3) -> 9/10.
    answers = ["2"] * agreeing + ["5"] * (10 - agreeing)
    assert vqa_accuracy("2", answers) == pytest.approx(score)


def test_vqa_accuracy_normalizes_both_sides():
    answers = ["two", "Two.", "2", "the 2"] + ["many"] * 6
    assert vqa_accuracy("2", answers) == 1.0  # all four normalize to "2"
    assert vqa_accuracy("Two!", answers) == 1.0
    assert vqa_accuracy("3", ["3"]) == 0.0  # one reference: nobody else agrees (VLMEvalKit's behaviour)
    # a digit before a period: VLMEvalKit keeps "2." (no match), InternVL's processor strips it
    answers = ["2"] * 10
    assert vqa_accuracy("2.", answers) == 0.0
    assert vqa_accuracy("2.", answers, normalizer="internvl") == 1.0


@pytest.mark.parametrize("a, b, d", [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("hello", "help", 2),
                                     ("flaw", "lawn", 2), ("abc", "abc", 0), ("straße", "strasse", 2)])
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


@pytest.mark.parametrize("prediction, answers, score", [
    ("hallo", ["hello"], 0.8),  # 1 edit over 5 characters
    ("help", ["hello"], 0.6),  # 2 edits / 5
    ("abxy", ["abcd"], 0.5),  # exactly at the threshold: kept
    ("axyz", ["abcd"], 0.0),  # 3/4 -> 0.25 < 0.5 -> 0
    ("axyz", ["abcd", "axy"], 0.75),  # the best reference counts: 1 edit / 4
    ("  Hello  ", ["hello"], 1.0),  # compared lowercased and stripped ...
    ("abd   ", ["abc"], 1 - 1 / 6),  # ... but divided by the raw length (6, trailing spaces included)
    ("", [""], 1.0),  # both empty: distance 0
    ("strasse", ["straße"], 1 - 2 / 7),  # lengths are of the uppercased strings: 'ß'.upper() is 'SS'
    ("", ["abc"], 0.0),
])
def test_anls(prediction, answers, score):
    assert anls(prediction, answers) == pytest.approx(score)


@pytest.mark.parametrize("target, prediction, right", [
    ("100", "105", True),  # exactly 5%
    ("100", "105.01", False),
    ("20", "21", True),
    ("-10", "-10.4", True),
    ("12%", "0.12", True),  # a trailing % divides by 100
    ("12%", "12.5%", True),  # 0.125 vs 0.12: 4.2%
    ("12%", "12", False),  # 12 vs 0.12, then "12" != "12%"
    ("0", "0.0", False),  # a zero target is not a number to compare against: string equality
    ("0", "0", True),
    ("Yes", "yes", True),  # non-numbers: case-insensitive equality
    ("1e2", "100", True),  # Python's float() accepts what it accepts
    ("%", "%", True),  # "%" is not a number: string equality
    ("nan", "nan", False),  # float('nan') is truthy and every comparison with it fails
])
def test_relaxed_correctness(target, prediction, right):
    assert relaxed_correctness(target, prediction) is right


def test_relaxed_accuracy_best_reference_and_internvl_argument_order():
    assert relaxed_accuracy(" 21 ", ["50", "20"]) == 1.0  # stripped, best over references
    assert relaxed_accuracy("105.2", ["100"]) == 0.0  # 5.2% of the reference
    assert relaxed_accuracy("105.2", ["100"], internvl=True) == 1.0  # InternVL divides by the prediction: 4.9%


def test_exact_match():
    assert exact_match(" Cat ", ["dog", "cat"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0
    assert exact_match("", [""]) == 1.0


# the official scorers, re-typed (VLMEvalKit vqa_eval.py / InternVL textvqa_eval.py + infographicsvqa_eval.py)
def ref_levenshtein(s1, s2):
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = range(len(s1) + 1)
    for i2, c2 in enumerate(s2):
        distances_ = [i2 + 1]
        for i1, c1 in enumerate(s1):
            if c1 == c2:
                distances_.append(distances[i1])
            else:
                distances_.append(1 + min((distances[i1], distances[i1 + 1], distances_[-1])))
        distances = distances_
    return distances[-1]


def ref_anls(groundtruths, prediction):
    values = []
    for gt in groundtruths:
        gt_answer = ' '.join(gt.strip().lower().split())
        det_answer = ' '.join(prediction.strip().lower().split())
        dist = ref_levenshtein(gt_answer, det_answer)
        length = max(len(gt.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(dist) / float(length))
    score = 1 - min(values)
    return 0.0 if score < 0.5 else score


def ref_vqa_score_internvl(pred, raw_answers):
    from test_normalize import ref_internvl
    answers = [ref_internvl(a) for a in raw_answers]
    gt_answers = list(enumerate(answers))
    scores = {}
    for unique_answer in set(answers):
        accs = []
        for gt_answer in gt_answers:
            other_answers = [item for item in gt_answers if item != gt_answer]
            matching_answers = [item for item in other_answers if item[1] == unique_answer]
            accs.append(min(1, float(len(matching_answers)) / 3))
        scores[unique_answer] = sum(accs) / len(accs)
    return scores.get(ref_internvl(pred), 0.0)


def ref_vqa_score_vlmevalkit(pred, raw_answers):
    from test_normalize import ref_vlmevalkit
    gts = [ref_vlmevalkit(x) for x in raw_answers]
    p = ref_vlmevalkit(pred)
    match = []
    for current_idx, _ in enumerate(gts):
        others = [item for idx, item in enumerate(gts) if idx != current_idx]
        match.append(min(1, float(len([item for item in others if item == p])) / 3))
    return sum(match) / len(match)


def test_metrics_match_the_reimplemented_official_scorers():
    import random
    rng = random.Random(1)
    words = ["two", "2", "2.", "The cat", "cat", "cats", "dont", "don't", "red", "Red!", "left-hand", "left hand",
             "1,000", "1000", "yes", "no", "", " ", "a dog", "dog"]
    for _ in range(1500):
        answers = [rng.choice(words) for _ in range(rng.choice([1, 3, 10]))]
        pred = rng.choice(words) + rng.choice(["", " ", "."])
        assert vqa_accuracy(pred, answers) == pytest.approx(ref_vqa_score_vlmevalkit(pred, answers))
        assert vqa_accuracy(pred, answers, "internvl") == pytest.approx(ref_vqa_score_internvl(pred, answers))
        assert anls(pred, answers) == pytest.approx(ref_anls(answers, pred))
        a, b = rng.choice(words), pred
        assert normalized_distance(a, b) == pytest.approx(
            0.0 if max(len(a.upper()), len(b.upper())) == 0 else ref_levenshtein(
                " ".join(a.strip().lower().split()), " ".join(b.strip().lower().split())) / max(len(a.upper()),
                                                                                                len(b.upper())))
