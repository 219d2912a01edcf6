"""Prompt building like the official chat(): <image> rules, token counts, and count mismatches."""

from __future__ import annotations

import pytest

from internvl.errors import ImageTokenMismatchError
from internvl.processing.prompt import build_query, expand_images, multi_image_prompt
from internvl.processing.templates import get_template

T = get_template("internvl2_5")


def test_image_placeholder_is_prepended_once():
    query, question = build_query(T, "What?", None, [2], num_image_token=256)
    assert question == "<image>\nWhat?"
    assert query.count("<IMG_CONTEXT>") == 512 and query.count("<img>") == 1
    assert "<img>" + "<IMG_CONTEXT>" * 512 + "</img>\nWhat?<|im_end|>" in query
    # no images: nothing is added
    query, question = build_query(T, "What?", None, [], num_image_token=256)
    assert question == "What?" and "<img>" not in query
    # history: the image lives in the first turn and is not added again
    query, question = build_query(T, "And?", [("<image>\nWhat?", "A cat.")], [1], num_image_token=4)
    assert question == "And?" and query.count("<IMG_CONTEXT>") == 4


def test_multi_image_order_and_counts():
    q = multi_image_prompt(2) + "Compare."
    assert q == "Image-1: <image>\nImage-2: <image>\nCompare."
    text = expand_images(q, [1, 3], num_image_token=2)
    first, second = text.split("Image-2: ")
    assert first.count("<IMG_CONTEXT>") == 2 and second.count("<IMG_CONTEXT>") == 6


def test_mismatch_names_both_counts():
    with pytest.raises(ImageTokenMismatchError, match="2 <image> placeholders but 1 images"):
        expand_images("<image><image>", [1], 256)
    with pytest.raises(ImageTokenMismatchError, match="1 <image> placeholders but 3 images"):
        build_query(T, "<image> x", None, [1, 1, 1], 256)
