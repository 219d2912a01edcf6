"""The official conversation templates as data, and the renderer that turns a conversation into a prompt.

Spec section 3. Facts from `internvl_chat/internvl/conversation.py` (and, for InternVL3.5-GPT-OSS,
`internvl_chat_gpt_oss/internvl/model/internvl_chat/conversation.py`): `render` reproduces the official
`Conversation.get_prompt()` byte for byte for the three separator styles InternVL checkpoints use, and
`render_spans` splits the same string into supervised / unsupervised pieces the way the official training
preprocessors (`preprocess_internvl2_5`, `preprocess_mpt`, `preprocess_internvl3_5_gpt_oss`, ...) mask labels.
No tokenization here.

GPT-OSS trains on a different form than it chats in (`preprocess_internvl3_5_gpt_oss`): every target reply
is `<|start|>assistant<|channel|>final<|message|>{reply}<|return|>`, with only `<|start|>assistant` unsupervised;
`render_spans(training=True)` produces it.

Intern-S1 (`interns1`, a ChatML template) thinks by default: its default system message asks for the reasoning
inside `<think>...</think>` (the `default_thinking_sys` of its chat template, which `enable_thinking` switches);
`without_thinking` gives the same template with no system message, and then no system block at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import TemplateError

# The InternVL 1.5 / 2.0 system message, kept by the older templates so benchmark numbers do not move.
_SYSTEM_V1 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
# The InternVL 2.5 / 3 / 3.5 system message.
_SYSTEM_V2_5 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
_SYSTEM_INTERNS1_THINKING = (
    "You are an expert reasoner with extensive experience in all areas. You approach problems through systematic "
    "thinking and rigorous reasoning. Your response should reflect deep understanding and precise logical "
    "thinking, making your solution path and reasoning clear to others. Please put your thinking process within "
    "<think>...</think> tags.")
_SYSTEM_GPT_OSS = ("You are InternVL, a large language model trained by Shanghai AI Laboratory.\n"
                   "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-06\n\nReasoning: low\n\n"
                   "# Valid channels: final. Channel must be included for every message.")

SepStyle = Literal["mpt", "mpt_two", "internvl_zh"]
Message = tuple[int | str, str | None]
_ROLE_ALIASES = {"user": 0, "human": 0, "assistant": 1, "gpt": 1}


@dataclass(frozen=True)
class Template:
    """One conversation format (the official `Conversation` without its message list).

    Attributes:
        name: The name `config.json`'s `template` field uses.
        system_template: Format string around the system message (`{system_message}`).
        system_message: The default system message.
        roles: (user prefix, assistant prefix), written before each message.
        sep: Written after each finished message (and after the system prompt).
        sep_style: "mpt": role + message + sep; "mpt_two": the same, but the conversation's last message,
            when it is the assistant's, ends with sep2; "internvl_zh": role + ': ' + message, user turns end
            with sep2 and assistant turns with sep.
        sep2: The second separator of "mpt_two" and "internvl_zh".
        stop_str: An extra string that ends generation, besides the separator.
        train_reply_prefix: Supervised text written before every assistant reply in training targets.
        train_reply_end: Ends every assistant reply in training targets (instead of sep / sep2).
        system_optional: An empty system message writes no system block at all (Qwen3-style chat templates).
        thinking: The default system message switches the model's thinking on (`without_thinking` drops it).
    """

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    sep_style: SepStyle = "mpt"
    sep2: str | None = None
    stop_str: str | None = None
    train_reply_prefix: str = ""
    train_reply_end: str | None = None
    system_optional: bool = False
    thinking: bool = False


_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
TEMPLATES: dict[str, Template] = {t.name: t for t in (
    # InternVL-Chat-V1-1; its system_template is unused by its style, and its system message is empty.
    Template("internvl_zh", "", "", ("<human>", "<bot>"), "</s>", sep_style="internvl_zh", sep2=" "),
    # Hermes-2 and internlm2-chat render identically; they differ only in how training adds <s>.
    Template("Hermes-2", "<|im_start|>system\n{system_message}", _SYSTEM_V1, _CHATML_ROLES, "<|im_end|>",
             stop_str="<|endoftext|>"),
    Template("internlm2-chat", "<|im_start|>system\n{system_message}", _SYSTEM_V1, _CHATML_ROLES, "<|im_end|>"),
    Template("phi3-chat", "<|system|>\n{system_message}", _SYSTEM_V1, ("<|user|>\n", "<|assistant|>\n"), "<|end|>"),
    # InternVL2.5, 3 and 3.5 (Qwen2.5 / Qwen3 / InternLM backbones).
    Template("internvl2_5", "<|im_start|>system\n{system_message}", _SYSTEM_V2_5, _CHATML_ROLES, "<|im_end|>\n"),
    # InternVL3.5-GPT-OSS (harmony format).
    Template("internvl3_5_gpt_oss", "<|start|>system<|message|>{system_message}", _SYSTEM_GPT_OSS,
             ("<|start|>user<|message|>", "<|start|>assistant"), "<|end|>", sep_style="mpt_two",
             sep2="<|return|>", train_reply_prefix="<|channel|>final<|message|>", train_reply_end="<|return|>"),
    # Intern-S1 / Intern-S1-mini (Qwen3 backbones, ChatML); thinking on by default.
    Template("interns1", "<|im_start|>system\n{system_message}", _SYSTEM_INTERNS1_THINKING, _CHATML_ROLES,
             "<|im_end|>\n", system_optional=True, thinking=True),
)}


def get_template(name: str) -> Template:
    """The template called `name` (as in `config.json`'s `template`).

    Raises:
        TemplateError: The name is unknown; the message lists the known names.
    """
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"unknown conversation template {name!r}; known: {', '.join(TEMPLATES)}") from None


def without_thinking(template: Template) -> Template:
    """The template with thinking switched off (Intern-S1's `enable_thinking=False`): no default system message.

    Raises:
        TemplateError: The template has no thinking mode to switch off.
    """
    if not template.thinking:
        raise TemplateError(f"template {template.name!r} has no thinking mode to switch off "
                            f"(only {', '.join(t.name for t in TEMPLATES.values() if t.thinking)} have one)")
    return dataclasses.replace(template, system_message="", thinking=False)


def stop_strings(template: Template) -> list[str]:
    """Strings that end a reply; the first is the one the official `chat()` makes the eos token.

    The official chat() stops at `sep.strip()` (`sep2.strip()` for the GPT-OSS style, whose replies end
    with `<|return|>`); a template's `stop_str` is added after it.
    """
    eos = template.sep2 if template.sep_style == "mpt_two" else template.sep
    return [eos.strip()] + ([template.stop_str] if template.stop_str else [])


def _role_index(template: Template, role: int | str) -> int:
    if role in (0, 1):
        return int(role)
    if isinstance(role, str) and role in template.roles:
        return template.roles.index(role)
    if isinstance(role, str) and role.lower() in _ROLE_ALIASES:
        return _ROLE_ALIASES[role.lower()]
    raise TemplateError(f"unknown role {role!r}: use 0/'user'/'human' or 1/'assistant'/'gpt'")


def render_spans(template: Template, messages: Sequence[Message], system_message: str | None = None,
                 training: bool = False) -> list[tuple[str, bool]]:
    """The prompt as consecutive pieces, each marked True when training supervises it.

    Supervised: each assistant message and its closing separator, minus the separator's trailing
    whitespace (the official preprocessors mask the `\\n` after `<|im_end|>`). Everything else (system
    prompt, user turns, role prefixes) is not. Adjacent pieces with the same mark are merged. With `training`,
    replies take the template's training form (`train_reply_prefix`, `train_reply_end`).

    Args:
        template: The conversation format.
        messages: (role, text) pairs in order; role is 0/1, 'user'/'assistant' ('human'/'gpt'), or the
            template's role string. A last message of None (or '') leaves the prompt open after that
            role's prefix, for generation.
        system_message: Replaces the template's default system message.

    Raises:
        TemplateError: An unknown role, or a None message that is not the last.
    """
    system = template.system_message if system_message is None else system_message
    if template.sep_style == "internvl_zh":  # this style ignores system_template
        pieces = [(system + template.sep2, False)]
    elif not system and template.system_optional:
        pieces = []
    else:
        pieces = [(template.system_template.format(system_message=system) + template.sep, False)]
    for i, (role, text) in enumerate(messages):
        r = _role_index(template, role)
        prefix = template.roles[r] + (": " if template.sep_style == "internvl_zh" else "")
        if not text:  # the official `if message:`: an empty string also renders as an open turn
            if text is None and i != len(messages) - 1:
                raise TemplateError(f"message {i} is None but is not the last message")
            pieces.append((prefix.rstrip(" ") if template.sep_style == "internvl_zh" else prefix, False))
            continue
        end = _separator(template, r, i, len(messages))
        if r == 0:
            pieces.append((prefix + text + end, False))
        else:
            if training:
                text = template.train_reply_prefix + text
                end = template.train_reply_end if template.train_reply_end is not None else end
            kept = end.rstrip()
            pieces += [(prefix, False), (text + kept, True), (end[len(kept):], False)]
    return _merge(pieces)


def render(template: Template, messages: Sequence[Message], system_message: str | None = None) -> str:
    """The prompt string the official `get_prompt()` produces (see `render_spans` for the arguments)."""
    return "".join(text for text, _ in render_spans(template, messages, system_message))


def _separator(template: Template, role: int, index: int, count: int) -> str:
    if template.sep_style == "internvl_zh":
        return (template.sep2, template.sep)[index % 2]  # by position, as upstream, not by role
    if template.sep_style == "mpt_two" and role == 1 and index == count - 1:
        return template.sep2
    return template.sep


def _merge(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    merged: list[tuple[str, bool]] = []
    for text, supervised in pieces:
        if not text:
            continue
        if merged and merged[-1][1] == supervised:
            merged[-1] = (merged[-1][0] + text, supervised)
        else:
            merged.append((text, supervised))
    return merged
