"""OpenAI messages -> the template's conversation, and the request model's own checks (no server)."""

from __future__ import annotations

import pytest

pytest.importorskip("pydantic")

from internvl.serve.messages import to_conversation  # noqa: E402
from internvl.serve.protocol import APIError, parse_request  # noqa: E402


def convert(messages):
    return to_conversation(parse_request({"messages": messages}).messages)


def img(url="data:image/png;base64,AAAA", **extra):
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def test_images_become_placeholders_like_the_cli():
    conv = convert([{"role": "user", "content": [img("a"), {"type": "text", "text": "What?"}]}])
    assert conv.question == "<image>\nWhat?" and [i.url for i in conv.images] == ["a"] and conv.history == []
    conv = convert([{"role": "user", "content": [img("a"), img("b", detail="low"), {"type": "text", "text": "Diff?"}]}])
    assert conv.question == "Image-1: <image>\nImage-2: <image>\nDiff?"
    assert [(i.url, i.max_tiles) for i in conv.images] == [("a", None), ("b", 1)]
    assert conv.images[1].where == "messages[0].content[1]"


def test_turns_system_and_merging():
    conv = convert([{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [img("a"), {"type": "text", "text": "Q1"}]},
                    {"role": "assistant", "content": "  A1 \n"},
                    {"role": "user", "content": "Q2"},
                    {"role": "user", "content": [img("b", max_dynamic_patch=3)]}])
    assert conv.system == "Be brief."
    assert conv.history == [("<image>\nQ1", "A1")]  # answers stripped, as chat() records them
    assert conv.question == "Q2\n<image>"  # consecutive user messages form one question
    assert [(i.url, i.max_tiles) for i in conv.images] == [("a", None), ("b", 3)]
    assert convert([{"role": "user", "content": "hi"}]).system is None


def test_request_defaults_and_stop_normalization():
    req = parse_request({"messages": [{"role": "user", "content": "x"}], "stop": "END",
                         "image_url_extra": 1})  # unknown fields are ignored
    assert req.stop == ["END"] and req.n == 1 and req.stream is False and req.answer_tokens is None
    req = parse_request({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": "http://x/y.png"}]}], "max_completion_tokens": 5, "max_tokens": 9})
    assert req.messages[0].content[0].image_url.url == "http://x/y.png" and req.answer_tokens == 5
    with pytest.raises(APIError, match=r"messages\[0\].content\[0\].text: Field required") as e:
        parse_request({"messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert e.value.status == 400 and e.value.param == "messages[0].content[0].text"
