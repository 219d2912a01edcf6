"""Prompt building like the official `chat()`: template rendering plus `<image>` expansion (spec section 3).

Each `<image>` placeholder, in order, becomes `<img>` + `<IMG_CONTEXT>` x (num_image_token x tiles) +
`</img>`; the model later writes one image feature over each `<IMG_CONTEXT>`. A count mismatch between
placeholders and images is an error here, before any tokenization or model work.
"""

from __future__ import annotations

from ..errors import ImageTokenMismatchError
from .templates import Template, render

IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN = "<img>", "</img>", "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"


def image_tokens(num_image_token: int, tiles: int) -> str:
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (num_image_token * tiles) + IMG_END_TOKEN


def multi_image_prompt(n: int, label: str = "Image") -> str:
    """'Image-1: <image>\\nImage-2: <image>\\n...' (label 'Frame' for video frames)."""
    return "".join(f"{label}-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(n))


def expand_images(text: str, num_patches_list: list[int], num_image_token: int) -> str:
    """Replace the `<image>` placeholders of `text`, in order, by their image-token blocks."""
    found = text.count(IMAGE_PLACEHOLDER)
    if found != len(num_patches_list):
        raise ImageTokenMismatchError(f"the prompt has {found} <image> placeholders but {len(num_patches_list)} "
                                      "images were given")
    for tiles in num_patches_list:
        text = text.replace(IMAGE_PLACEHOLDER, image_tokens(num_image_token, tiles), 1)
    return text


def build_query(template: Template, question: str, history: list[tuple[str, str]] | None,
                num_patches_list: list[int], num_image_token: int, system_message: str | None = None
                ) -> tuple[str, str]:
    """(prompt ready to tokenize, question as recorded in history).

    Like the official chat(): '<image>\\n' is prepended to the question when images are given, there is no
    history and the question has no placeholder; placeholders anywhere in the conversation are expanded.
    """
    if num_patches_list and not history and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    turns: list[str | None] = [t for pair in (history or []) for t in pair] + [question, None]
    prompt = render(template, turns, system_message)
    return expand_images(prompt, num_patches_list, num_image_token), question
