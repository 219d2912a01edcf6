"""The official InternVL evaluation prompts (VLMEvalKit's InternVL wrapper), golden strings and the wrapper's
prompt building re-typed here, and the tile budget per dataset and per image."""

from __future__ import annotations

import random
import string

import pytest

from internvl.eval import prompts
from internvl.eval.generate import row_prompt
from internvl.eval.tsv import Benchmark, Row


def test_multiple_choice_prompt_golden():
    assert prompts.multiple_choice_prompt("What is it?", {"A": "cat", "B": "dog"}, hint="A pet.") == (
        "A pet.\nWhat is it?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly.")
    assert prompts.multiple_choice_prompt("这是什么?", {"A": "猫", "B": "狗"}) == "这是什么?\nA. 猫\nB. 狗\n请直接回答选项字母。"
    assert prompts.multiple_choice_prompt("Why?", {}) == "Why?\nAnswer the question directly."


@pytest.mark.parametrize("dataset, prompt", [
    ("MME", "Is it red? Answer the question using a single word or phrase."),
    ("HallusionBench", "Is it red? Please answer yes or no. Answer the question using a single word or phrase."),
    ("AMBER", "Is it red? Please answer yes or no. Answer the question using a single word or phrase."),
    ("POPE", "Is it red?"),
    ("ShapesYN", "Is it red?"),
])
def test_yes_no_prompt_golden(dataset, prompt):
    assert prompts.yes_no_prompt("Is it red?", dataset) == prompt


@pytest.mark.parametrize("dataset, prompt", [
    ("TextVQA_VAL", "What?\nAnswer the question using a single word or phrase."),
    ("ChartQA_TEST", "What?\nAnswer the question using a single word or phrase."),
    ("LLaVABench", "What?\nAnswer this question in detail."),
    ("MathVista_MINI", "What?"),
    ("MMVet", "What?"),
    ("My_VQA", "What?\nAnswer the question using a single word or phrase."),
])
def test_open_prompt_golden(dataset, prompt):
    assert prompts.open_prompt("What?", dataset) == prompt


def test_images_come_first():
    assert prompts.with_images("Q", 0) == "Q"
    assert prompts.with_images("Q", 1) == "<image>\nQ"
    assert prompts.with_images("Q", 3) == "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\nQ"


@pytest.mark.parametrize("dataset, tiles", [("MMBench_DEV_EN", 6), ("ChartQA_TEST", 12), ("DocVQA_VAL", 18),
                                            ("InfoVQA_TEST", 24), ("OCRBench", 24), ("MMMU_DEV_VAL", 12)])
def test_tile_budget_per_dataset(dataset, tiles):
    assert prompts.max_tiles(dataset) == tiles
    assert prompts.max_tiles(dataset, override=3) == 3


def test_tile_budget_per_image():
    assert prompts.tiles_per_image(6, 1) == 6
    assert prompts.tiles_per_image(24, 4) == 16  # 64 tiles per question, shared
    assert prompts.tiles_per_image(12, 100) == 1


# ------------------------------------------------- VLMEvalKit's InternVL prompt building, re-typed
def ref_build_prompt(line, dataset, kind, image_num):
    def listinstr(lst, s):
        return any(item in s for item in lst)
    if kind == "yorn":
        question = line["question"]
        if listinstr(["MME"], dataset):
            prompt = question + " Answer the question using a single word or phrase."
        elif listinstr(["HallusionBench", "AMBER"], dataset):
            prompt = question + " Please answer yes or no. Answer the question using a single word or phrase."
        else:
            prompt = question
    elif kind == "mcq":
        question = line["question"]
        hint = line.get("hint") or None
        if hint is not None:
            question = hint + "\n" + question
        options = {c: line[c] for c in string.ascii_uppercase if line.get(c)}
        for key, item in options.items():
            question += f"\n{key}. {item}"
        prompt = question
        cn = any("\u4e00" <= ch <= "\u9fff" for ch in prompt)
        if len(options):
            prompt += "\n请直接回答选项字母。" if cn else "\nAnswer with the option's letter from the given choices directly."
        else:
            prompt += "\n请直接回答问题。" if cn else "\nAnswer the question directly."
    else:
        question = line["question"]
        if listinstr(["LLaVABench", "WildVision"], dataset):
            prompt = question + "\nAnswer this question in detail."
        elif listinstr(["OCRVQA", "TextVQA", "ChartQA", "DocVQA", "InfoVQA", "OCRBench", "DUDE", "SLIDEVQA", "GQA",
                        "MMLongBench_DOC"], dataset):
            prompt = question + "\nAnswer the question using a single word or phrase."
        elif listinstr(["MathVerse"], dataset):
            prompt = question.replace("please directly answer the question and", "please")
        elif listinstr(["MathVista", "MathVision", "VCR", "MTVQA", "MMVet", "MMDU", "CRPE", "MIA-Bench", "MM-Math",
                        "DynaMath", "QSpatial", "WeMath", "LogicVista", "MM-IFEval", "ChartMimic", "MMReason"],
                       dataset):
            prompt = question
        else:
            prompt = question + "\nAnswer the question using a single word or phrase."
    # reorganize_prompt: the message is [text, image, image, ...]
    message = [dict(type="text", value=prompt)] + [dict(type="image", value="x")] * image_num
    if image_num == 1:
        return "<image>\n" + "\n".join(x["value"] for x in message if x["type"] == "text")
    if image_num == 0:
        return prompt
    out, image_idx = "", 1
    for x in message:
        if x["type"] == "text":
            out += x["value"]
        else:
            out += f"<Image-{image_idx}>"
            image_idx += 1
    out = "".join(f"Image-{i + 1}: <image>\n" for i in range(image_num)) + out
    return out.replace("".join(f"<Image-{i + 1}>" for i in range(image_num)), "")


def test_row_prompts_match_the_reimplemented_wrapper():
    rng = random.Random(5)
    datasets = ["MME", "HallusionBench", "POPE", "MMBench_DEV_EN", "CCBench", "TextVQA_VAL", "ChartQA_TEST",
                "LLaVABench", "MathVista_MINI", "MathVerse_MINI", "Custom", "中文"]
    for _ in range(300):
        dataset = rng.choice(datasets)
        kind = rng.choice(["mcq", "yorn", "vqa"])
        fields = {"index": "1", "question": rng.choice(["What is it?", "这是什么", "Does it? please directly answer "
                                                        "the question and say"]),
                  "hint": rng.choice(["", "A hint.", "提示"])}
        for c in "ABCD"[:rng.randint(0, 4)]:
            fields[c] = rng.choice(["cat", "dog", "猫"])
        n = rng.randint(0, 3)
        row = Row(1, fields, images=[None] * n)
        text = prompts.with_images(row_prompt(Benchmark(None, dataset, list(fields), [row]), row, kind), n)
        assert text == ref_build_prompt(fields, dataset, kind, n), (dataset, kind, fields)
