"""The official conversation templates as data, and the renderer that turns a conversation into a prompt.

Spec section 3; facts from `internvl_chat/internvl/conversation.py`. Every template InternVL checkpoints
name uses the "MPT" layout: system prompt + sep, then role + message + sep per finished turn, and the bare
assistant role at the end to ask for a reply. The GPT-OSS variant ends the last assistant turn with `sep2`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TemplateError

# The InternVL 1.5 / 2.0 system message, kept by later templates for older checkpoints.
_SYSTEM_V1 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
# The InternVL 2.5+ system message.
_SYSTEM_V2_5 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


@dataclass(frozen=True)
class Template:
    name: str
    system_template: str  # holds {system_message}
    system_message: str
    roles: tuple[str, str]  # (user prefix, assistant prefix)
    sep: str
    sep2: str | None = None  # closes the last assistant message when set (GPT-OSS)
    stop_str: str | None = None  # an extra stop string besides sep

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end a reply: the separator, and the template's extra stop string if any."""
        stops = [self.sep.strip()] + ([self.sep2] if self.sep2 else [])
        return stops + ([self.stop_str] if self.stop_str else [])


_CHATML = ("<|im_start|>user\n", "<|im_start|>assistant\n")
TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("Hermes-2", "<|im_start|>system\n{system_message}", _SYSTEM_V1, _CHATML, "<|im_end|>",
             stop_str="<|endoftext|>"),
    Template("internlm2-chat", "<|im_start|>system\n{system_message}", _SYSTEM_V1, _CHATML, "<|im_end|>"),
    Template("phi3-chat", "<|system|>\n{system_message}", _SYSTEM_V1, ("<|user|>\n", "<|assistant|>\n"), "<|end|>"),
    Template("internvl2_5", "<|im_start|>system\n{system_message}", _SYSTEM_V2_5, _CHATML, "<|im_end|>\n"),
    Template("internvl3_5_gpt_oss", "<|start|>system<|message|>{system_message}",
             "You are InternVL, a large language model trained by Shanghai AI Laboratory.\nKnowledge cutoff: "
             "2024-06\nCurrent date: 2025-08-06\n\nReasoning: low\n\n# Valid channels: final. Channel must be "
             "included for every message.",
             ("<|start|>user<|message|>", "<|start|>assistant"), "<|end|>", sep2="<|return|>"),
)}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"unknown conversation template {name!r}; known: {', '.join(TEMPLATES)}") from None


def render_spans(template: Template, turns: list[str | None], system_message: str | None = None
                 ) -> list[tuple[str, bool]]:
    """A conversation as prompt pieces, each marked True when it is assistant output (what training supervises).

    `turns` alternate user and assistant texts starting with the user; a final None asks for a reply.
    The supervised pieces are the assistant messages with their closing separator.
    """
    system = template.system_template.format(
        system_message=template.system_message if system_message is None else system_message)
    spans = [(system + template.sep, False)]
    for i, text in enumerate(turns):
        role = template.roles[i % 2]
        if text is None:
            if i != len(turns) - 1:
                raise TemplateError(f"turn {i} has no text but is not the last turn")
            spans.append((role, False))
            continue
        last_reply = i % 2 == 1 and i == len(turns) - 1
        sep = template.sep2 if template.sep2 and last_reply else template.sep
        if i % 2 == 0:
            spans.append((role + text + sep, False))
        else:
            spans += [(role, False), (text + sep, True)]
    return spans


def render(template: Template, turns: list[str | None], system_message: str | None = None) -> str:
    """The prompt string the official `get_prompt()` produces for these turns."""
    return "".join(text for text, _ in render_spans(template, turns, system_message))
