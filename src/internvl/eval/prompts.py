"""The official InternVL evaluation prompts, per dataset kind and name, and the tile budget per image.

As VLMEvalKit's InternVL wrapper builds them (`vlmeval/vlm/internvl/internvl_chat.py::build_prompt`,
`utils.py::build_multi_choice_prompt` / `reorganize_prompt`, `set_max_num`; docs/mpo-prm-eval.md 3.4):
- multiple choice: `hint\\nquestion`, one `\\nA. text` line per option, then "Answer with the option's
  letter from the given choices directly." (the Chinese instruction when the text has CJK characters);
- yes/no: the question as it is, plus " Answer the question using a single word or phrase." for MME and
  " Please answer yes or no. Answer the question using a single word or phrase." for HallusionBench/AMBER;
- open questions: "\\nAnswer the question using a single word or phrase." except for the detailed-answer
  sets (LLaVABench, WildVision) and the reasoning sets (MathVista, MMVet, ...) that take the question alone;
- images before the text: `<image>\\n` for one, `Image-1: <image>\\nImage-2: <image>\\n...` for several;
- tiles: at most 6 per image (12, 18 or 24 for the chart, document and OCR sets), and at most 64 per
  question, shared as max(1, min(max_num, 64 // images)). The first image of MMMU questions is upscaled 2x.
The chain-of-thought and MPO variants (`USE_COT=1`) are not reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..processing.prompt import IMAGE_PLACEHOLDER, multi_image_prompt

MCQ_INSTRUCTION = "\nAnswer with the option's letter from the given choices directly."
MCQ_INSTRUCTION_CN = "\n请直接回答选项字母。"
OPEN_INSTRUCTION = "\nAnswer the question directly."
OPEN_INSTRUCTION_CN = "\n请直接回答问题。"
SHORT_ANSWER = "Answer the question using a single word or phrase."
YES_OR_NO = "Please answer yes or no."
DETAILED = "\nAnswer this question in detail."

SHORT_ANSWER_SETS = ("OCRVQA", "TextVQA", "ChartQA", "DocVQA", "InfoVQA", "OCRBench", "DUDE", "SLIDEVQA", "GQA",
                     "MMLongBench_DOC")
DETAILED_SETS = ("LLaVABench", "WildVision")
BARE_QUESTION_SETS = ("MathVista", "MathVision", "VCR", "MTVQA", "MMVet", "MMDU", "CRPE", "MIA-Bench", "MM-Math",
                      "DynaMath", "QSpatial", "WeMath", "LogicVista", "MM-IFEval", "ChartMimic", "MMReason")
TILES_12 = ("ChartQA_TEST", "MMMU_DEV_VAL", "MMMU_TEST", "MME-RealWorld", "VCR_EN", "VCR_ZH", "OCRVQA", "BMMR")
TILES_18 = ("DocVQA_VAL", "DocVQA_TEST", "DUDE", "MMLongBench_DOC", "SLIDEVQA")
TILES_24 = ("InfoVQA_VAL", "InfoVQA_TEST", "OCRBench", "HRBench4K", "HRBench8K")
DEFAULT_TILES = 6
MAX_TILES_PER_QUESTION = 64
_CJK = re.compile("[\u4e00-\u9fff]")


def named(dataset: str, names: Sequence[str]) -> bool:
    """VLMEvalKit's `listinstr`: some name is a substring of the dataset name (case-sensitive)."""
    return any(n in dataset for n in names)


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def multiple_choice_prompt(question: str, choices: Mapping[str, str], hint: str = "") -> str:
    """`build_multi_choice_prompt`: hint, question, options, then the instruction."""
    prompt = f"{hint}\n{question}" if hint else question
    for letter, text in choices.items():
        prompt += f"\n{letter}. {text}"
    if choices:
        return prompt + (MCQ_INSTRUCTION_CN if has_cjk(prompt) else MCQ_INSTRUCTION)
    return prompt + (OPEN_INSTRUCTION_CN if has_cjk(prompt) else OPEN_INSTRUCTION)


def yes_no_prompt(question: str, dataset: str) -> str:
    if named(dataset, ("MME",)):
        return f"{question} {SHORT_ANSWER}"
    if named(dataset, ("HallusionBench", "AMBER")):
        return f"{question} {YES_OR_NO} {SHORT_ANSWER}"
    return question


def open_prompt(question: str, dataset: str) -> str:
    if named(dataset, DETAILED_SETS):
        return question + DETAILED
    if named(dataset, SHORT_ANSWER_SETS):
        return f"{question}\n{SHORT_ANSWER}"
    if named(dataset, ("MathVerse",)):
        return question.replace("please directly answer the question and", "please")
    if named(dataset, BARE_QUESTION_SETS):
        return question
    return f"{question}\n{SHORT_ANSWER}"


def with_images(text: str, num_images: int) -> str:
    """The user turn: image placeholders first (`reorganize_prompt`), then the text."""
    if num_images == 0:
        return text
    if num_images == 1:
        return f"{IMAGE_PLACEHOLDER}\n{text}"
    return multi_image_prompt(num_images) + text


def max_tiles(dataset: str, override: int | None = None) -> int:
    """Tiles per image for a dataset (`set_max_num`), unless `override` (`--max-dynamic-patch`) is given."""
    if override is not None:
        return override
    for names, tiles in ((TILES_12, 12), (TILES_18, 18), (TILES_24, 24)):
        if named(dataset, names):
            return tiles
    return DEFAULT_TILES


def tiles_per_image(max_num: int, num_images: int) -> int:
    """The budget of each image of a question with `num_images` images (`generate_v2`)."""
    return max(1, min(max_num, MAX_TILES_PER_QUESTION // max(1, num_images)))


def upscale_first_image(dataset: str) -> bool:
    return named(dataset, ("MMMU",))
