"""Templates render exactly the official prompt strings; the spans mark exactly the supervised assistant parts."""

from __future__ import annotations

import dataclasses

import pytest

from internvl.errors import TemplateError
from internvl.processing.templates import (TEMPLATES, get_template, render, render_spans, stop_strings,
                                           without_thinking)

# Byte-exact copies of the official system messages (internvl_chat/internvl/conversation.py).
SYS25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
SYS1 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
SYS_OSS = ("You are InternVL, a large language model trained by Shanghai AI Laboratory.\nKnowledge cutoff: 2024-06\n"
           "Current date: 2025-08-06\n\nReasoning: low\n\n# Valid channels: final. Channel must be included for "
           "every message.")

# Intern-S1's default_thinking_sys (its chat template's, also ms-swift's InternS1Template default system)
SYS_S1 = ("You are an expert reasoner with extensive experience in all areas. You approach problems through "
          "systematic thinking and rigorous reasoning. Your response should reflect deep understanding and precise "
          "logical thinking, making your solution path and reasoning clear to others. Please put your thinking "
          "process within <think>...</think> tags.")

SINGLE = [(0, "<image>\nWhat is it?"), (1, None)]
MULTI = [(0, "Hi"), (1, "Hello"), (0, "Why?"), (1, None)]

# (template, system message passed, conversation, expected prompt)
GOLDEN = [
    ("internvl2_5", None, SINGLE, f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?"
                                  "<|im_end|>\n<|im_start|>assistant\n"),
    ("internvl2_5", "S", MULTI, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
                                "<|im_start|>assistant\n"),
    ("Hermes-2", None, SINGLE, f"<|im_start|>system\n{SYS1}<|im_end|><|im_start|>user\n<image>\nWhat is it?"
                               "<|im_end|><|im_start|>assistant\n"),
    ("Hermes-2", "S", MULTI, "<|im_start|>system\nS<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"
                             "Hello<|im_end|><|im_start|>user\nWhy?<|im_end|><|im_start|>assistant\n"),
    ("internlm2-chat", None, MULTI, f"<|im_start|>system\n{SYS1}<|im_end|><|im_start|>user\nHi<|im_end|>"
                                    "<|im_start|>assistant\nHello<|im_end|><|im_start|>user\nWhy?<|im_end|>"
                                    "<|im_start|>assistant\n"),
    ("phi3-chat", None, SINGLE, f"<|system|>\n{SYS1}<|end|><|user|>\n<image>\nWhat is it?<|end|><|assistant|>\n"),
    ("phi3-chat", "S", MULTI, "<|system|>\nS<|end|><|user|>\nHi<|end|><|assistant|>\nHello<|end|><|user|>\nWhy?"
                              "<|end|><|assistant|>\n"),
    ("internvl_zh", None, MULTI, " <human>: Hi <bot>: Hello</s><human>: Why? <bot>:"),
    ("internvl_zh", "S", SINGLE, "S <human>: <image>\nWhat is it? <bot>:"),
    ("internvl3_5_gpt_oss", None, SINGLE, f"<|start|>system<|message|>{SYS_OSS}<|end|><|start|>user<|message|>"
                                          "<image>\nWhat is it?<|end|><|start|>assistant"),
    ("internvl3_5_gpt_oss", "S", MULTI, "<|start|>system<|message|>S<|end|><|start|>user<|message|>Hi<|end|>"
                                        "<|start|>assistantHello<|end|><|start|>user<|message|>Why?<|end|>"
                                        "<|start|>assistant"),
    # GPT-OSS closes the conversation's last reply with <|return|>, earlier replies with <|end|>
    ("internvl3_5_gpt_oss", "S", MULTI[:3] + [(1, "Fine.")],
     "<|start|>system<|message|>S<|end|><|start|>user<|message|>Hi<|end|><|start|>assistantHello<|end|>"
     "<|start|>user<|message|>Why?<|end|><|start|>assistantFine.<|return|>"),
    # Intern-S1: thinking on by default (the thinking system prompt), ChatML turns
    ("interns1", None, SINGLE, f"<|im_start|>system\n{SYS_S1}<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?"
                               "<|im_end|>\n<|im_start|>assistant\n"),
    ("interns1", "S", MULTI, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                             "Hello<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"),
]


@pytest.mark.parametrize("name, system, messages, want", GOLDEN)
def test_golden_prompts(name, system, messages, want):
    assert render(get_template(name), messages, system_message=system) == want


def test_every_template_has_a_golden():
    assert {g[0] for g in GOLDEN} == set(TEMPLATES)


def test_role_names_and_system_message_braces():
    t = get_template("internvl2_5")
    by_index = render(t, MULTI)
    for roles in (("user", "assistant"), ("human", "gpt"), t.roles):
        assert render(t, [(roles[r], m) for r, m in MULTI]) == by_index
    assert render(t, [(0, "x"), (1, None)], system_message="{not a field}").startswith(
        "<|im_start|>system\n{not a field}<|im_end|>")


def test_empty_message_renders_like_none_as_upstream():
    t = get_template("internvl2_5")
    assert render(t, [(0, "Hi"), (1, "")]) == render(t, [(0, "Hi"), (1, None)])


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_spans_join_to_the_prompt_and_mark_only_replies(name):
    t = get_template(name)
    conv = [(0, "Q1"), (1, "A1"), (0, "Q2"), (1, "A2")]
    spans = render_spans(t, conv, system_message="sys")
    assert "".join(s for s, _ in spans) == render(t, conv, system_message="sys")
    supervised = [s for s, sup in spans if sup]
    last_sep = t.sep2 if t.sep_style == "mpt_two" else t.sep
    assert supervised == ["A1" + t.sep.rstrip(), "A2" + last_sep.rstrip()]
    assert all(not sup for s, sup in spans if "Q1" in s or "Q2" in s or "sys" in s)
    # adjacent pieces with the same mark are merged
    assert all(a[1] != b[1] for a, b in zip(spans, spans[1:]))


def test_internvl2_5_spans_leave_the_newline_after_im_end_unsupervised():
    # preprocess_internvl2_5 masks `<|im_start|>assistant\n` and the final `\n` of each reply
    spans = render_spans(get_template("internvl2_5"), [(0, "Q"), (1, "A")], system_message="S")
    assert spans == [("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n",
                      False), ("A<|im_end|>", True), ("\n", False)]


def test_open_prompt_has_no_supervised_part():
    spans = render_spans(get_template("Hermes-2"), SINGLE)
    assert len(spans) == 1 and spans[0][1] is False


@pytest.mark.parametrize("name, want", [
    ("internvl2_5", ["<|im_end|>"]), ("Hermes-2", ["<|im_end|>", "<|endoftext|>"]),
    ("internlm2-chat", ["<|im_end|>"]), ("phi3-chat", ["<|end|>"]), ("internvl_zh", ["</s>"]),
    ("internvl3_5_gpt_oss", ["<|return|>"]), ("interns1", ["<|im_end|>"])])
def test_stop_strings(name, want):
    assert stop_strings(get_template(name)) == want


def test_gpt_oss_training_spans_are_the_official_targets():
    """preprocess_internvl3_5_gpt_oss: every reply is <|start|>assistant<|channel|>final<|message|>...<|return|>,
    only `<|start|>assistant` unsupervised; chat rendering (training=False) is unchanged."""
    t = get_template("internvl3_5_gpt_oss")
    spans = render_spans(t, [(0, "Hi"), (1, "Hello"), (0, "Why?"), (1, "Fine.")], system_message="S", training=True)
    assert spans == [("<|start|>system<|message|>S<|end|><|start|>user<|message|>Hi<|end|><|start|>assistant", False),
                     ("<|channel|>final<|message|>Hello<|return|>", True),
                     ("<|start|>user<|message|>Why?<|end|><|start|>assistant", False),
                     ("<|channel|>final<|message|>Fine.<|return|>", True)]
    # other templates train on what they chat in
    conv = [(0, "Q"), (1, "A")]
    assert render_spans(get_template("internvl2_5"), conv, training=True) == render_spans(get_template("internvl2_5"), conv)


def test_interns1_thinking_switch():
    t = get_template("interns1")
    assert t.thinking
    off = without_thinking(t)
    assert render(off, SINGLE) == "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"
    assert render(off, SINGLE, system_message="S") == render(t, SINGLE, system_message="S")  # a given system stays
    with pytest.raises(TemplateError, match="has no thinking mode to switch off .*interns1"):
        without_thinking(get_template("internvl2_5"))


def test_errors():
    with pytest.raises(TemplateError, match="unknown conversation template 'vicuna'; known: .*internvl2_5"):
        get_template("vicuna")
    t = get_template("internvl2_5")
    with pytest.raises(TemplateError, match="message 0 is None"):
        render(t, [(0, None), (1, "x")])
    with pytest.raises(TemplateError, match="unknown role 'system'"):
        render(t, [("system", "x")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "other"
