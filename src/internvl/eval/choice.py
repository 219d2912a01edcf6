"""Multiple-choice answers: option extraction from free text, and MMBench's circular evaluation.

As VLMEvalKit does it (`vlmeval/utils/matching_util.py`, `vlmeval/dataset/utils/multiple_choice.py`,
`vlmeval/tools.py::CIRCULAR`; docs/mpo-prm-eval.md 3.4):
- `can_infer` reads a letter from an answer: first as an option label standing alone near the end of the
  answer ("B", "(B) cat", "The answer is B."), else as the one option whose text the answer contains
  ("a cute cat" -> the option "cat"). A refusal is 'Z'. None when neither rule decides.
- A circular question is asked once per rotation of its options; it counts as right only when every
  rotation is answered right. Rotation i moves each option i places down (with four options, rotation 1
  puts A's text under D, B's under A, ...); its index is the original index + i * 10**6 and its image is a
  reference to the original row.
Decisions the rules cannot make go to an optional judge (see `judge.py`); without one they count as wrong.
"""

from __future__ import annotations

import re
import string
from collections import deque
from collections.abc import Callable, Mapping, Sequence

LETTERS = string.ascii_uppercase
CIRCULAR_OFFSET = 10**6
REFUSAL = "Z"  # what a refusal, or a judge that finds no matching option, answers
# Exact strings VLMEvalKit treats as a refusal ('Z'), and the marker of a failed API call (no decision).
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
API_FAILURE = "Failed to obtain answer via API"
_OPTION_SEPARATORS = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def options(row: Mapping[str, str]) -> dict[str, str]:
    """The row's non-empty option columns A, B, ... in letter order."""
    return {c: row[c] for c in LETTERS if row.get(c, "") != ""}


def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """An option label standing alone among the answer's last five words (exactly one label present)."""
    if API_FAILURE in answer:
        return None
    if any(r in answer for r in REFUSALS):
        return REFUSAL
    cleaned = answer
    for c in _OPTION_SEPARATORS:
        cleaned = cleaned.replace(c, " ")
    words = cleaned.split()
    present = [c for c in choices if c in words]
    if len(present) == 1:
        if words.index(present[0]) > len(words) - 5:
            return present[0]
    elif not present and REFUSAL in words:
        return REFUSAL
    match = _ANSWER_IS.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """The one option whose text occurs in the (not much longer) answer, case-insensitively."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    found = [k for k, v in choices.items() if str(v).lower() in answer]
    return found[0] if len(found) == 1 else None


def can_infer(answer: str, choices: Mapping[str, str]) -> str | None:
    """The option letter (or 'Z' for a refusal) the answer picks, or None when the rules cannot tell."""
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


# A judge takes (question, choices, prediction) and returns a letter, 'Z', or None when it cannot decide.
ChoiceJudge = Callable[[str, Mapping[str, str], str], "str | None"]


def extract_choice(question: str, choices: Mapping[str, str], prediction: str,
                   judge: ChoiceJudge | None = None) -> tuple[str | None, str]:
    """(letter or 'Z' or None, how it was decided: 'rule', 'judge' or 'none')."""
    letter = can_infer(prediction, choices)
    if letter:
        return letter, "rule"
    if judge is not None:
        return judge(question, choices, prediction), "judge"
    return None, "none"


def circular_hit(group: Sequence[tuple[str, str, Mapping[str, str], str]],
                 judge: ChoiceJudge | None = None) -> tuple[int, list[str | None]]:
    """Score one circular group, given (question, prediction, choices, answer) per rotation.

    The rules first: any rotation they read as a wrong letter fails the group at once, and the group passes
    when they read every rotation right. Only the rotations they leave open go to the judge (rotation by
    rotation, stopping at the first wrong one); without a judge an open rotation fails the group.

    Returns:
        (1 or 0, the letter read for each rotation; None where it was never decided).
    """
    read = [can_infer(pred, choices) for _, pred, choices, _ in group]
    if any(r and r != answer for r, (*_, answer) in zip(read, group)):
        return 0, read
    if all(r == answer for r, (*_, answer) in zip(read, group)):
        return 1, read
    if judge is None:
        return 0, read
    for i, (question, pred, choices, answer) in enumerate(group):
        if read[i] is None:
            read[i] = judge(question, choices, pred)
            if read[i] != answer:
                return 0, read
    return 1, read


def rotations(n: int) -> list[dict[str, str]]:
    """Label maps (old -> new) of the n rotations of n options; rotation 0 is the identity."""
    labels = LETTERS[:n]
    turned = deque(labels)
    maps = [dict(zip(labels, labels))]
    for _ in range(n - 1):
        turned.rotate(1)
        maps.append(dict(zip(labels, turned)))
    return maps


def _abnormal(choices: Mapping[str, str]) -> bool:
    """VLMEvalKit keeps a question out of circular evaluation when an option's text names several option
    labels as words, or when an option's text is itself a label."""
    for text in choices.values():
        words = "".join(ch if ch in string.ascii_letters or ch == " " else " " for ch in text).split()
        if len({w for w in words if w in choices}) > 1:
            return True
    return any(text in LETTERS for text in choices.values())


def circularize(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """A multiple-choice table -> the same table with every rotation as its own row (`g_index` added).

    Rows need integer `index`, the option columns and `answer`. Rows that cannot rotate (fewer than two
    options, a gap in the options, an answer that is not one of them, labels inside option texts) are kept
    once, unrotated. All originals come first, then all first rotations, and so on.
    """
    offset = CIRCULAR_OFFSET
    while any(int(r["index"]) >= offset for r in rows):
        offset *= 10
    by_rotation: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        choices = options(row)
        n = len(choices)
        if (n < 2 or list(choices) != list(LETTERS[:n]) or row["answer"] not in choices or _abnormal(choices)):
            by_rotation.setdefault(0, []).append({**row, "g_index": row["index"]})
            continue
        for i, mapping in enumerate(rotations(n)):
            new = {**row, "g_index": row["index"]}
            if i:
                new["index"] = str(int(row["index"]) + offset * i)
                new["image"] = row["index"]
                new["answer"] = mapping[row["answer"]]
                for old, label in mapping.items():
                    new[label] = row[old]
            by_rotation.setdefault(i, []).append(new)
    return [r for i in sorted(by_rotation) for r in by_rotation[i]]
