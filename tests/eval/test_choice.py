"""Multiple choice: option extraction from free text and circular evaluation, against cases worked by hand from
docs/mpo-prm-eval.md 3.4 and VLMEvalKit's `can_infer` / `CIRCULAR` re-typed here."""

from __future__ import annotations

import copy
import random
import re
import string
from collections import deque

import pytest

from internvl.eval.choice import can_infer, circular_hit, circularize, extract_choice, rotations

ANIMALS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"),
    ("(B) dog", "B"),
    ("The answer is B.", "B"),
    ("**B**", "B"),
    ("A cat.", "A"),
    ("A dog.", "A"),  # the article "A" reads as option A (upstream behaviour)
    ("B is wrong because the image clearly shows a small fish swimming", None),  # label too early, text too long
    ("I think the correct answer is **C** because of the wings and feathers", "C"),  # the 'answer is' pattern
    ("The answer is a dog", "A"),  # that pattern is case-insensitive: "a" -> A (upstream behaviour)
    ("Cannot determine the answer", "Z"),  # a refusal
    ("Z", "Z"),
    ("A or B", None),  # two labels: undecided
    ("It's a dog.", "B"),  # no label: the one option text inside the answer
    ("fish", "D"),
    ("b", None),  # labels are upper case
    ("E", None),  # not an option
    ("Failed to obtain answer via API", None),
])
def test_can_infer(answer, letter):
    assert can_infer(answer, dict(ANIMALS)) == letter


def test_can_infer_text_needs_a_unique_option_and_a_short_answer():
    assert can_infer("hot dog", {"A": "dog", "B": "hot dog"}) is None  # both texts occur
    assert can_infer("a lovely hot dog", {"A": "hot dog", "B": "cat"}) == "A"
    long = "a dog " * 5  # 30 characters > 2 x (3 + 3 + 4 + 4)
    assert can_infer(long, dict(ANIMALS)) is None
    assert can_infer("D", {"A": "x", "B": "y", "C": "z"}) is None


# ----------------------------------------------------------------------- VLMEvalKit's rules, re-typed
def ref_can_infer_option(answer, choices):
    if 'Failed to obtain answer via API' in answer:
        return False
    reject_to_answer = ["Sorry, I can't help with images of people yet.", "I can't process this file.",
                        "I'm sorry, but without the image provided", 'Cannot determine the answer']
    for err in reject_to_answer:
        if err in answer:
            return 'Z'

    def count_choice(splits, choices, prefix='', suffix=''):
        cnt = 0
        for c in choices:
            if prefix + c + suffix in splits:
                cnt += 1
        return cnt

    answer_mod = copy.copy(answer)
    for c in '.()[],:;!*#{}':
        answer_mod = answer_mod.replace(c, ' ')
    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)
    if count == 1:
        for ch in choices:
            if ch in splits and splits.index(ch) > (len(splits) - 5):
                return ch
    elif count == 0 and count_choice(splits, {'Z', ''}) == 1:
        return 'Z'
    match = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**").search(answer or "")
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return False


def ref_can_infer_text(answer, choices):
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    for k in choices:
        choices[k] = str(choices[k]).lower()
    cands = [k for k in choices if choices[k] in answer]
    return cands[0] if len(cands) == 1 else False


def ref_can_infer(answer, choices):
    answer = str(answer)
    copt = ref_can_infer_option(answer, choices)
    return copt if copt else ref_can_infer_text(answer, choices)


WORDS = ["A", "B", "C", "D", "E", "Z", "a", "the", "answer", "is", "correct", "Answer", "cat", "dog", "Dog", "bird",
         "fish", "(B)", "**C**", "B.", "[A]", "{D}", "#", ":", ";", "!", "I", "think", "Cannot determine the answer",
         "because", "of", "it", "option", "hot", "is:"]


def test_can_infer_matches_the_reimplemented_rules():
    rng = random.Random(2)
    for _ in range(5000):
        n = rng.randint(2, 5)
        texts = rng.sample(["cat", "dog", "bird", "fish", "hot dog", "Dog", "a"], n)
        choices = dict(zip(string.ascii_uppercase, texts))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 14)))
        assert can_infer(answer, dict(choices)) == (ref_can_infer(answer, dict(choices)) or None), (answer, choices)


# -------------------------------------------------------------------------------------- circular
def test_rotations_move_each_option_down_one_place_per_rotation():
    assert rotations(4) == [dict(A="A", B="B", C="C", D="D"), dict(A="D", B="A", C="B", D="C"),
                            dict(A="C", B="D", C="A", D="B"), dict(A="B", B="C", C="D", D="A")]
    assert rotations(2) == [dict(A="A", B="B"), dict(A="B", B="A")]


def test_circularize_as_worked_by_hand():
    rows = [{"index": "7", "image": "IMG", "question": "Which?", "A": "cat", "B": "dog", "C": "bird", "D": "fish",
             "answer": "B"}]
    out = circularize(rows)
    assert [r["index"] for r in out] == ["7", "1000007", "2000007", "3000007"]
    assert all(r["g_index"] == "7" for r in out)
    assert out[0]["image"] == "IMG" and all(r["image"] == "7" for r in out[1:])  # copies refer to the original
    # rotation 1: A's text goes under D, B's under A, ...; the answer follows its text
    assert [out[1][c] for c in "ABCD"] == ["dog", "bird", "fish", "cat"] and out[1]["answer"] == "A"
    assert [out[2][c] for c in "ABCD"] == ["bird", "fish", "cat", "dog"] and out[2]["answer"] == "D"
    assert [out[3][c] for c in "ABCD"] == ["fish", "cat", "dog", "bird"] and out[3]["answer"] == "C"
    for r in out:
        assert r[r["answer"]] == "dog"


def test_circularize_keeps_rows_it_cannot_rotate_once():
    rows = [{"index": "1", "A": "A and B", "B": "none", "answer": "A"},  # labels inside an option
            {"index": "2", "A": "x", "B": "C", "answer": "A"},  # an option that is a label
            {"index": "3", "A": "x", "B": "y", "answer": "C"},  # the answer is not an option
            {"index": "4", "A": "x", "B": "", "answer": "A"},  # one option
            {"index": "5", "A": "x", "B": "y", "answer": "B"}]
    out = circularize(rows)
    assert [r["index"] for r in out] == ["1", "2", "3", "4", "5", "1000005"]
    assert circularize([{"index": "1500000", "A": "x", "B": "y", "answer": "A"}])[1]["index"] == "11500000"


def ref_circular_rows(data):
    """VLMEvalKit's CIRCULAR rotation step for one group of k-option rows (without pandas)."""
    k = max(i + 1 for i, ch in enumerate(string.ascii_uppercase) if any(ch in r and r[ch] for r in data))
    offset = 1e6
    while max(int(r["index"]) for r in data) >= offset:
        offset *= 10
    labels = string.ascii_uppercase[:k]
    rotates = [labels]
    dq = deque(labels)
    for _ in range(k - 1):
        dq.rotate(1)
        rotates.append(list(dq))
    out = []
    for i, rot in enumerate(rotates):
        for r in data:
            new = dict(r, g_index=r["index"])
            if i:
                new["index"] = str(int(int(r["index"]) + offset * i))
                new["image"] = r["index"]
                c_map = {s: t for s, t in zip(rotates[0], rot)}
                new["answer"] = c_map[r["answer"]]
                for s, t in c_map.items():
                    new[t] = r[s]
            out.append(new)
    return out


def test_circularize_matches_the_reimplemented_tool():
    rng = random.Random(3)
    for k in (2, 3, 4, 5):
        data = [{"index": str(rng.randint(0, 10**7)), "image": "x" * 80, "answer": rng.choice("ABCDE"[:k]),
                 **{ch: f"option {rng.random():.6f}" for ch in "ABCDE"[:k]}} for _ in range(6)]
        data = list({r["index"]: r for r in data}.values())
        assert circularize(data) == ref_circular_rows(data)


def _group(predictions, answer_text="dog"):
    base = {"question": "Which?", "A": "cat", "B": "dog", "C": "bird", "D": "fish", "answer": "B", "index": "0"}
    rows = circularize([base])
    return [("Which?", p, {c: r[c] for c in "ABCD"}, r["answer"]) for p, r in zip(predictions, rows)]


def test_circular_group_counts_only_when_every_rotation_is_right():
    assert circular_hit(_group(["dog"] * 4)) == (1, ["B", "A", "D", "C"])
    hit, read = circular_hit(_group(["dog", "dog", "cat", "dog"]))  # one wrong rotation
    assert hit == 0 and read[2] == "C"  # rotation 2 puts cat under C
    assert circular_hit(_group(["B", "A", "D", "C"]))[0] == 1  # letters that follow the rotations
    assert circular_hit(_group(["B", "B", "B", "B"]))[0] == 0  # always answering B is caught


def test_circular_group_asks_the_judge_only_about_undecided_rotations():
    asked = []

    def judge(question, choices, prediction):
        asked.append(prediction)
        return {v: k for k, v in choices.items()}["dog"]  # a judge that always finds the dog

    group = _group(["dog", "hmm", "dog", "dog"])
    assert circular_hit(group) == (0, ["B", None, "D", "C"])  # without a judge: undecided counts as wrong
    assert circular_hit(group, judge) == (1, ["B", "A", "D", "C"]) and asked == ["hmm"]
    asked.clear()
    assert circular_hit(_group(["cat", "hmm", "dog", "dog"]), judge)[0] == 0 and asked == []  # a rule found a wrong one
    assert circular_hit(_group(["hmm", "dog", "cat", "hmm"]), lambda q, c, p: "Z")[0] == 0


def test_extract_choice_reports_how_it_decided():
    assert extract_choice("q", ANIMALS, "B") == ("B", "rule")
    assert extract_choice("q", ANIMALS, "no idea") == (None, "none")
    assert extract_choice("q", ANIMALS, "no idea", lambda q, c, p: "Z") == ("Z", "judge")
