"""Templates render exactly the official prompt strings; the spans mark exactly the assistant replies."""

from __future__ import annotations

import pytest

from internvl.errors import TemplateError
from internvl.processing.templates import TEMPLATES, get_template, render, render_spans

SYS25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
SYS1 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"

GOLDEN = {
    "internvl2_5": f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                   "Hello<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n",
    "Hermes-2": f"<|im_start|>system\n{SYS1}<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"
                "Hello<|im_end|><|im_start|>user\nWhy?<|im_end|><|im_start|>assistant\n",
    "internlm2-chat": f"<|im_start|>system\n{SYS1}<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"
                      "Hello<|im_end|><|im_start|>user\nWhy?<|im_end|><|im_start|>assistant\n",
    "phi3-chat": f"<|system|>\n{SYS1}<|end|><|user|>\nHi<|end|><|assistant|>\nHello<|end|><|user|>\nWhy?<|end|>"
                 "<|assistant|>\n",
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_prompts(name):
    assert render(get_template(name), ["Hi", "Hello", "Why?", None]) == GOLDEN[name]


def test_gpt_oss_closes_the_last_reply_with_return():
    t = get_template("internvl3_5_gpt_oss")
    text = render(t, ["Hi", "Hello"], system_message="S")
    assert text == "<|start|>system<|message|>S<|end|><|start|>user<|message|>Hi<|end|><|start|>assistantHello<|return|>"


def test_custom_system_message_and_spans():
    t = get_template("internvl2_5")
    spans = render_spans(t, ["Q1", "A1", "Q2", "A2"], system_message="be brief")
    assert "".join(s for s, _ in spans) == render(t, ["Q1", "A1", "Q2", "A2"], "be brief")
    assert spans[0][0].startswith("<|im_start|>system\nbe brief")
    assert [s for s, sup in spans if sup] == ["A1<|im_end|>\n", "A2<|im_end|>\n"]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_stop_strings_and_spans_cover_the_prompt(name):
    t = get_template(name)
    assert t.sep.strip() in t.stop_strings
    spans = render_spans(t, ["a", "b", "c", None])
    assert "".join(s for s, _ in spans) == render(t, ["a", "b", "c", None])


def test_errors():
    with pytest.raises(TemplateError, match="known: .*internvl2_5"):
        get_template("vicuna")
    with pytest.raises(TemplateError, match="turn 0"):
        render(get_template("internvl2_5"), [None, "x"])
