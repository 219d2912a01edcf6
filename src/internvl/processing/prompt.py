"""The query the official `chat()` / `batch_chat()` build: template rendering plus `<image>` expansion. Spec section 3.

A question (and its history) is rendered with the model's template; then each `<image>` placeholder, in
order over the whole prompt, becomes `<img>` + `<IMG_CONTEXT>` x (num_image_token x tiles) + `</img>`, and
the model writes one image feature over each `<IMG_CONTEXT>`. Unlike upstream, a placeholder count that
differs from the number of images is an error here, before any tokenization or model work.

`tokenize_query` tokenizes the query so that control tokens spelled in the user's own text (`<|im_start|>`,
`<|im_end|>`, `<IMG_CONTEXT>`, ...) are the plain text they are, not the tokens the template writes: a user
cannot forge a system turn or end the prompt early. It renders the conversation a second time with those
spellings blanked to NULs of the same length; where the two renderings differ are exactly the user's
spellings, and only there does tokenization change.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from ..errors import ImageTokenMismatchError
from .templates import Message, Template, render

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"


def image_tokens(num_image_token: int, tiles: int) -> str:
    """The text that stands for one image of `tiles` tiles: `<img>` + `<IMG_CONTEXT>` x n + `</img>`."""
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (num_image_token * tiles) + IMG_END_TOKEN


def multi_image_prompt(n: int) -> str:
    """'Image-1: <image>\\nImage-2: <image>\\n...', the official prefix for a question about n images."""
    return "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(n))


def add_image_placeholder(question: str, history: Sequence[tuple[str, str]] | None, num_images: int) -> str:
    """The question as the official chat() records it: '<image>\\n' + question when images are given,
    the conversation has no history and the question has no placeholder of its own; else unchanged.

    Upstream tests `history is None`; an empty history counts as none here, since upstream would
    otherwise send the images without any placeholder and fail later.
    """
    if num_images and not history and IMAGE_PLACEHOLDER not in question:
        return IMAGE_PLACEHOLDER + "\n" + question
    return question


def expand_images(text: str, num_patches_list: Sequence[int], num_image_token: int) -> str:
    """Replace the `<image>` placeholders of `text`, in order, by their image-token blocks.

    Args:
        text: A rendered prompt (or a single message).
        num_patches_list: Tiles of each image, in placeholder order.
        num_image_token: Tokens per tile (256 for released checkpoints).

    Raises:
        ImageTokenMismatchError: The number of placeholders differs from the number of images.
    """
    found = text.count(IMAGE_PLACEHOLDER)
    if found != len(num_patches_list):
        raise ImageTokenMismatchError(
            f"the prompt has {found} {IMAGE_PLACEHOLDER} placeholder(s) but {len(num_patches_list)} image(s) "
            f"were given (num_patches_list={list(num_patches_list)})")
    head, *rest = text.split(IMAGE_PLACEHOLDER)
    blocks = [image_tokens(num_image_token, tiles) + part for tiles, part in zip(num_patches_list, rest)]
    return head + "".join(blocks)


def build_query(template: Template, question: str, history: Sequence[tuple[str, str]] | None = None,
                num_patches_list: Sequence[int] | None = None, num_image_token: int = 256,
                system_message: str | None = None, return_question: bool = False) -> str | tuple[str, str]:
    """The prompt the official `chat()` sends to the tokenizer.

    Args:
        template: The model's conversation template.
        question: The new user message; may hold `<image>` placeholders (e.g. `multi_image_prompt`).
        history: Earlier (question, answer) pairs, as chat() returns them.
        num_patches_list: Tiles of each image, in placeholder order over the whole conversation; None or
            empty for a text-only query.
        num_image_token: Tokens per tile.
        system_message: Replaces the template's default system message.
        return_question: Also return the question as it goes into the history (with any '<image>\\n'
            this function prepended).

    Returns:
        The prompt, ending with the assistant's role prefix; or (prompt, question) with return_question.

    Raises:
        ImageTokenMismatchError: The conversation's placeholder count differs from len(num_patches_list).
    """
    patches = list(num_patches_list or [])
    question = add_image_placeholder(question, history, len(patches))
    messages: list[Message] = [m for q, a in (history or []) for m in ((0, q), (1, a))]
    messages += [(0, question), (1, None)]
    query = expand_images(render(template, messages, system_message), patches, num_image_token)
    return (query, question) if return_question else query


def _blank(text: str, pattern: re.Pattern) -> str:
    return pattern.sub(lambda m: "\0" * len(m.group()), text)


def _differing_spans(query: str, shadow: str) -> list[tuple[int, int]]:
    """Character spans where `query` differs from `shadow` (which differs only by NUL runs)."""
    spans = []
    for m in re.finditer("\0+", shadow):
        i = m.start()
        while i < m.end():
            if query[i] == "\0":
                i += 1
                continue
            j = i
            while j < m.end() and query[j] != "\0":
                j += 1
            spans.append((i, j))
            i = j
    return spans


def tokenize_query(tokenizer, template: Template, question: str, history: Sequence[tuple[str, str]] | None = None,
                   num_patches_list: Sequence[int] | None = None, num_image_token: int = 256,
                   system_message: str | None = None, user_system: bool = False,
                   special_tokens_in_text: bool = False) -> list[int]:
    """The token ids of `build_query(...)` (same arguments), with the user's text tokenized as text.

    Args:
        tokenizer: A `Tokenizer` (its `control_tokens()` are the spellings treated as text).
        user_system: The system message came from the user (a server request), not from the model's config.
        special_tokens_in_text: The old behaviour: control tokens spelled in the text are control tokens.
    """
    query = build_query(template, question, history, num_patches_list, num_image_token, system_message)
    guarded: Collection[str] = () if special_tokens_in_text else tokenizer.control_tokens()
    if not guarded:
        return tokenizer.encode_prompt(query)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(guarded, key=len, reverse=True)))
    texts = [question, *(t for turn in history or () for t in turn)] + ([system_message] if user_system and
                                                                         system_message else [])
    if not any(pattern.search(t) for t in texts):
        return tokenizer.encode_prompt(query)
    shadow = build_query(template, _blank(question, pattern), [(_blank(q, pattern), _blank(a, pattern))
                                                               for q, a in history or ()],
                         num_patches_list, num_image_token,
                         _blank(system_message, pattern) if user_system and system_message else system_message)
    assert len(shadow) == len(query)  # blanking keeps every length, so positions line up
    return tokenizer.encode_prompt(query, _differing_spans(query, shadow))
