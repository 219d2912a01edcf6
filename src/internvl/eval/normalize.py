"""Answer normalization for VQA accuracy, as the two official scorers define it (docs/mpo-prm-eval.md 3.1).

VLMEvalKit (`vlmeval/dataset/utils/vqa_eval.py::process_answer`): newlines and tabs to spaces, strip,
punctuation, then number words, articles and contractions. InternVL (`eval/vqa/textvqa_eval.py`, the MMF /
EvalAI processor): the same steps after a `word_tokenize` that lowercases, drops `,` and `?` and splits
`'s` off. The two differ in small ways that change scores, and both are kept exactly, quirks included:
- VLMEvalKit strips a period only when no digit is on either side ("3." stays "3."); InternVL's pattern
  `(?!<=\\d)(\\.)(?!\\d)` is a typo for a look-behind and strips every period not followed by a digit.
- Both pass `re.UNICODE` (32) as the `count` of `re.sub`, so at most 32 periods are stripped.
- A punctuation mark is deleted when it touches a space or when the text has a digit-comma-digit group,
  and replaced by a space otherwise; the test looks at the input text, not the text being edited.
- The contraction table has capitalized keys ("Im", "Ive") that never match after lowercasing, and maps
  "somebody'd" to "somebodyd"; both are kept.
"""

from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")

# The official VQA contraction table: each line is a contracted form followed by the spellings mapped to it.
_CONTRACTION_LINES = """
ain't aint | aren't arent | can't cant | could've couldve | couldn't couldnt
couldn't've couldn'tve couldnt've | didn't didnt | doesn't doesnt | don't dont | hadn't hadnt
hadn't've hadnt've hadn'tve | hasn't hasnt | haven't havent | he'd hed | he'd've hed've he'dve | he's hes
how'd howd | how'll howll | how's hows | I'd've Id've I'dve | I'm Im | I've Ive | isn't isnt | it'd itd
it'd've itd've it'dve | it'll itll | let's let's | ma'am maam | mightn't mightnt
mightn't've mightnt've mightn'tve | might've mightve | mustn't mustnt | must've mustve | needn't neednt
not've notve | o'clock oclock | oughtn't oughtnt | 'ow's'at ow's'at 'ows'at 'ow'sat | shan't shant
she'd've shed've she'dve | she's she's | should've shouldve | shouldn't shouldnt
shouldn't've shouldnt've shouldn'tve | somebodyd somebody'd | somebody'd've somebodyd've somebody'dve
somebody'll somebodyll | somebody's somebodys | someone'd someoned | someone'd've someoned've someone'dve
someone'll someonell | someone's someones | something'd somethingd
something'd've somethingd've something'dve | something'll somethingll | that's thats | there'd thered
there'd've thered've there'dve | there're therere | there's theres | they'd theyd
they'd've theyd've they'dve | they'll theyll | they're theyre | they've theyve | 'twas twas | wasn't wasnt
we'd've wed've we'dve | we've weve | weren't werent | what'll whatll | what're whatre | what's whats
what've whatve | when's whens | where'd whered | where's wheres | where've whereve | who'd whod
who'd've whod've who'dve | who'll wholl | who's whos | who've whove | why'll whyll | why're whyre
why's whys | won't wont | would've wouldve | wouldn't wouldnt | wouldn't've wouldnt've wouldn'tve
y'all yall | y'all'll yall'll y'allll | y'all'd've yall'd've y'alld've y'all'dve | you'd youd
you'd've youd've you'dve | you'll youll | you're youre | you've youve
"""
CONTRACTIONS = {spelling: entry.split()[0]
                for entry in _CONTRACTION_LINES.replace("\n", " | ").split("|") if entry.strip()
                for spelling in entry.split()[1:]}

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")  # VLMEvalKit
_DIGIT_COMMAS_DIGIT = re.compile(r"(?<=\d)(\,)+(?=\d)")  # InternVL / MMF
_PERIOD_VLMEVALKIT = re.compile(r"(?<!\d)\.(?!\d)")
_PERIOD_INTERNVL = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: see the module docstring
_SUB_COUNT = re.UNICODE  # the official calls pass re.UNICODE (== 32) positionally, as re.sub's count


def process_punctuation(text: str, internvl: bool = False) -> str:
    """Delete or space out the punctuation marks, then strip periods (the official `process_punctuation`)."""
    digit_comma = (_DIGIT_COMMAS_DIGIT if internvl else _DIGIT_COMMA_DIGIT).search(text) is not None
    out = text
    for p in PUNCTUATION:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or digit_comma) else " ")
    return (_PERIOD_INTERNVL if internvl else _PERIOD_VLMEVALKIT).sub("", out, _SUB_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase; number words to digits; drop articles; restore contractions (`process_digit_article`)."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vlmevalkit(answer: str) -> str:
    """VLMEvalKit's `process_answer`, applied to predictions and reference answers alike."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def normalize_internvl(answer: str) -> str:
    """InternVL's `EvalAIAnswerProcessor.__call__` (TextVQA / VQAv2 evaluation)."""
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer, internvl=True))
