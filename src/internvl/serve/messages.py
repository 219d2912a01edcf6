"""OpenAI chat messages -> the conversation InternVL's template takes: system message, (question, answer)
history, the new question, and the images in placeholder order over the whole conversation.

A user message becomes its parts in order, joined by newlines, each image part an `<image>` placeholder;
with several images in one message they are numbered `Image-1: <image>`, `Image-2: <image>`, ... as the
model cards and `internvl chat` do, so the same images and question give the same prompt here and in the CLI.
No image is read here (`media.py`) and nothing is tokenized (`prompting.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..processing.prompt import IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN
from .protocol import APIError, ImagePart, Message, TextPart

RESERVED = (IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, IMG_START_TOKEN, IMG_END_TOKEN)


@dataclass
class ImageRef:
    url: str
    max_tiles: int | None  # this image's own tile limit, if the request set one
    where: str  # e.g. "messages[0].content[1]", for error messages


@dataclass
class Conversation:
    system: str | None
    history: list[tuple[str, str]]
    question: str
    images: list[ImageRef] = field(default_factory=list)


def _check_text(text: str, where: str) -> str:
    for token in RESERVED:
        if token in text:
            raise APIError(400, f"{where}: the text contains the reserved token {token!r}; send images as "
                                "image_url content parts instead", param=where)
    return text


def _text_only(msg: Message, where: str) -> str:
    if msg.content is None or isinstance(msg.content, str):
        return _check_text(msg.content or "", where)
    pieces = []
    for j, part in enumerate(msg.content):
        if not isinstance(part, TextPart):
            raise APIError(400, f"{where}[{j}]: {msg.role} messages may hold only text, not {part.type}",
                           param=f"{where}[{j}]")
        pieces.append(_check_text(part.text, f"{where}[{j}]"))
    return "\n".join(pieces)


def _user_text(msg: Message, where: str, images: list[ImageRef]) -> str:
    """The question text of one user message; its images are appended to `images`."""
    if msg.content is None or isinstance(msg.content, str):
        text = _check_text(msg.content or "", where)
        if not text.strip():
            raise APIError(400, f"{where}: the user message is empty", param=where)
        return text
    n_images = sum(isinstance(p, ImagePart) for p in msg.content)
    pieces, k = [], 0
    for j, part in enumerate(msg.content):
        if isinstance(part, ImagePart):
            k += 1
            url = part.image_url
            tiles = url.max_dynamic_patch if url.max_dynamic_patch else 1 if url.detail == "low" else None
            images.append(ImageRef(url.url, tiles, f"{where}[{j}]"))
            pieces.append(f"Image-{k}: {IMAGE_PLACEHOLDER}" if n_images > 1 else IMAGE_PLACEHOLDER)
        else:
            pieces.append(_check_text(part.text, f"{where}[{j}]"))
    if not any(p.strip() for p in pieces):
        raise APIError(400, f"{where}: the user message is empty", param=where)
    return "\n".join(pieces)


def to_conversation(messages: list[Message]) -> Conversation:
    """Split OpenAI messages into the template's parts.

    System (or developer) messages must come first; then user and assistant turns, where consecutive user
    messages merge into one question and the last message must be the user's.

    Raises:
        APIError(400): the order of roles, an empty question, images outside user messages, or reserved
            image tokens in the text.
    """
    system: list[str] = []
    turns: list[tuple[str, str | None]] = []  # (question, answer)
    images: list[ImageRef] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}].content"
        if msg.role in ("system", "developer"):
            if turns:
                raise APIError(400, f"messages[{i}]: a {msg.role} message must come before the conversation",
                               param=f"messages[{i}]")
            system.append(_text_only(msg, where))
        elif msg.role == "user":
            question = _user_text(msg, where, images)
            if turns and turns[-1][1] is None:  # consecutive user messages: one question
                turns[-1] = (turns[-1][0] + "\n" + question, None)
            else:
                turns.append((question, None))
        else:  # assistant
            if not turns or turns[-1][1] is not None:
                raise APIError(400, f"messages[{i}]: an assistant message must follow a user message",
                               param=f"messages[{i}]")
            # Stripped, as the official chat() records answers in its history.
            turns[-1] = (turns[-1][0], _text_only(msg, where).strip())
    if not turns or turns[-1][1] is not None:
        raise APIError(400, "the last message must be the user's (there is nothing to answer)", param="messages")
    history = [(q, a) for q, a in turns[:-1]]
    return Conversation("\n".join(system) if system else None, history, turns[-1][0], images)
