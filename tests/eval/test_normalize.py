"""VQA answer normalization: cases worked by hand from the official definitions (docs/mpo-prm-eval.md 3.1), and
the official processors re-typed here (VLMEvalKit's `process_answer`, InternVL's `EvalAIAnswerProcessor`) and
compared with ours on thousands of generated answers."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest

from internvl.eval.normalize import CONTRACTIONS, normalize_internvl, normalize_vlmevalkit


@pytest.mark.parametrize("text, vlmevalkit, internvl", [
    ("Two dogs", "2 dogs", "2 dogs"),  # number words become digits
    ("The cat.", "cat", "cat"),  # articles dropped, final period stripped
    ("3.", "3.", "3"),  # VLMEvalKit keeps a period after a digit; InternVL's (sic) pattern does not
    ("3.5", "3.5", "3.5"),
    ("x.5", "x.5", "x.5"),  # a period before a digit stays in both
    ("3.x", "3.x", "3x"),
    ("x.y", "xy", "xy"),
    ("dont", "don't", "don't"),  # contractions restored
    ("couldnt've", "couldn't've", "couldn't've"),
    ("Don't", "don't", "don't"),
    ("Im", "im", "im"),  # the table's key is "Im", which never matches after lowercasing
    ("It's red", "it's red", "it 's red"),  # InternVL splits off 's
    ("1,000", "1000", "1000"),  # a digit,digit group deletes every punctuation mark
    ("red, blue", "red blue", "red blue"),  # a mark next to a space is deleted
    ("red,blue", "red blue", "redblue"),  # ... otherwise VLMEvalKit spaces it out; InternVL drops commas first
    ("left-hand", "left hand", "left hand"),
    ("well - known", "well known", "well known"),
    ("yes!", "yes", "yes"),
    ("Is it? Yes", "is it yes", "is it yes"),
    ("(a)", "", ""),  # brackets spaced out, then the article "a" dropped
    ("a an the", "", ""),
    ("none", "0", "0"),
    ("zero apples", "0 apples", "0 apples"),
    ("eleven", "eleven", "eleven"),  # only none/zero..ten are mapped
    ("one two three four five six seven eight nine ten", "1 2 3 4 5 6 7 8 9 10", "1 2 3 4 5 6 7 8 9 10"),
    ("20.5%", "20.5%", "20.5%"),  # % is not in the punctuation list
    ("red\tcar\n", "red car", "red car"),
    ("the dont", "don't", "don't"),
    ("Somebody'd", "somebodyd", "somebodyd"),  # the table maps the contraction to the bare form
    ("." * 40, "." * 8, "." * 8),  # re.UNICODE passed as re.sub's count: only 32 periods are stripped
    ("  ", "", ""),
])
def test_golden(text, vlmevalkit, internvl):
    assert normalize_vlmevalkit(text) == vlmevalkit
    assert normalize_internvl(text) == internvl


def test_contraction_table_is_the_official_one():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["yall'd've"] == "y'all'd've"
    assert CONTRACTIONS["'ows'at"] == "'ow's'at" and CONTRACTIONS["let's"] == "let's"
    # sha1 of the sorted (key, value) pairs of VLMEvalKit's table (identical to InternVL's), computed from upstream
    digest = hashlib.sha1(json.dumps(sorted(CONTRACTIONS.items())).encode()).hexdigest()
    assert digest == "1f2727c6657746735403d8468c75dd8023124900"


# ------------------------------------------------------------------ the official processors, re-typed
PUNCT = [';', r'/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!']
NUMBERS = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5', 'six': '6',
           'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}


def ref_process_punctuation(inText, comma_strip, period_strip):
    outText = inText
    for p in PUNCT:
        if (p + ' ' in inText or ' ' + p in inText) or (re.search(comma_strip, inText) is not None):
            outText = outText.replace(p, '')
        else:
            outText = outText.replace(p, ' ')
    outText = period_strip.sub('', outText, re.UNICODE)
    return outText


def ref_process_digit_article(inText):
    outText = []
    for word in inText.lower().split():
        word = dict(NUMBERS).setdefault(word, word)
        if word not in ['a', 'an', 'the']:
            outText.append(word)
    for wordId, word in enumerate(outText):
        if word in CONTRACTIONS:
            outText[wordId] = CONTRACTIONS[word]
    return ' '.join(outText)


def ref_vlmevalkit(answer):
    answer = answer.replace('\n', ' ').replace('\t', ' ').strip()
    answer = ref_process_punctuation(answer, re.compile(r'(\d)(,)(\d)'), re.compile(r'(?<!\d)\.(?!\d)'))
    return ref_process_digit_article(answer)


def ref_internvl(item):
    item = item.lower().replace(',', '').replace('?', '').replace("'s", " 's").strip()
    item = item.replace('\n', ' ').replace('\t', ' ').strip()
    item = ref_process_punctuation(item, re.compile(r'(?<=\d)(\,)+(?=\d)'), re.compile(r'(?!<=\d)(\.)(?!\d)'))
    return ref_process_digit_article(item)


PIECES = ["the", "A", "an", "two", "Two", "ten", "none", "dont", "Im", "3", "12", ".", "3.5", "1,000", ",", "?", "!",
          "-", " - ", "(x)", "it's", "red", "x.y", "\t", "\n", " ", "  ", "'s", "/", "\\", "@", "%", "y'all", "1,,2",
          "\"q\"", "[b]", "+", "=", "_", "<", ">", "`", ";", "{", "}"]


def test_matches_the_reimplemented_official_processors():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) + rng.choice(["", " "]) for _ in range(rng.randint(0, 12)))
        assert normalize_vlmevalkit(text) == ref_vlmevalkit(text), text
        assert normalize_internvl(text) == ref_internvl(text), text
