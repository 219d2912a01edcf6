"""Every bad request is a 4xx with an OpenAI-style error body naming the problem, never a 500 or a hang, and
the server answers the next good request."""

from __future__ import annotations

import base64
import os

import httpx
import pytest
from PIL import Image
from serve_helpers import MODEL_NAME, data_uri, image_part, png_bytes, png_claiming, running_server, text_part

MAX_LEN = 1024
GOOD = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "temperature": 0}


def noise_png(side: int) -> bytes:
    import io
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


def user(*parts, **extra) -> dict:
    return {**GOOD, "messages": [{"role": "user", "content": list(parts)}], **extra}


def with_image(url: str, **extra) -> dict:
    return user(image_part(url), text_part("What?"), **extra)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    (d / "ok.png").write_bytes(png_bytes())
    return d


@pytest.fixture(scope="module")
def strict_server(tiny, media_dir):
    with running_server(*tiny, max_len=MAX_LEN, max_image_bytes=200_000, max_image_pixels=1_000_000,
                        max_request_bytes=2_000_000, allowed_local_media_path=str(media_dir)) as s:
        yield s


def cases(media_dir):
    ok = png_bytes()
    msgs = GOOD["messages"]
    return [
        # (name, body: dict or raw bytes, status, words the message must contain)
        ("invalid JSON", b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
        ("not UTF-8", b"\xff\xfe\x00", 400, "not valid JSON"),
        ("JSON but not an object", b"[1, 2]", 400, "JSON object"),
        ("unknown model", {**GOOD, "model": "gpt-4o"}, 404, "'gpt-4o' does not exist"),
        ("no messages", {"model": MODEL_NAME}, 400, "messages"),
        ("empty messages", {**GOOD, "messages": []}, 400, "messages"),
        ("last message not the user's", {**GOOD, "messages": msgs + [{"role": "assistant", "content": "x"}]},
         400, "last message"),
        ("assistant first", {**GOOD, "messages": [{"role": "assistant", "content": "x"}] + msgs}, 400,
         "must follow a user message"),
        ("system after the conversation", {**GOOD, "messages": msgs + [{"role": "system", "content": "x"}]},
         400, "must come before"),
        ("unknown role", {**GOOD, "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        ("unknown content part", user({"type": "input_audio", "input_audio": {}}), 400, "input_audio"),
        ("image in an assistant message", {**GOOD, "messages": msgs + [
            {"role": "assistant", "content": [image_part(data_uri(ok))]}, {"role": "user", "content": "x"}]},
         400, "only text"),
        ("empty question", {**GOOD, "messages": [{"role": "user", "content": "  "}]}, 400, "empty"),
        ("reserved image token in text", user(text_part("look: <image>")), 400, "reserved token"),
        ("negative temperature", {**GOOD, "temperature": -1}, 400, "temperature"),
        ("temperature not a number", {**GOOD, "temperature": "hot"}, 400, "temperature"),
        ("top_p zero", {**GOOD, "top_p": 0}, 400, "top_p"),
        ("n zero", {**GOOD, "n": 0}, 400, "n: Input should be greater than or equal to 1"),
        ("n above the batch", {**GOOD, "n": 9}, 400, "batch size of 8"),
        ("max_tokens zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
        ("max_tokens past the context", {**GOOD, "max_tokens": MAX_LEN}, 400, f"context of {MAX_LEN} tokens"),
        ("five stop strings", {**GOOD, "stop": list("abcde")}, 400, "at most 4 stop strings"),
        ("empty stop string", {**GOOD, "stop": [""]}, 400, "must not be empty"),
        ("seed not an integer", {**GOOD, "seed": "x"}, 400, "seed"),
        ("logprobs", {**GOOD, "logprobs": True}, 400, "logprobs"),
        ("tools", {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tool calling"),
        ("stream flag does not change a 4xx", {**GOOD, "stream": True, "top_p": 5}, 400, "top_p"),
        ("tile limit above the server's", {**GOOD, "max_dynamic_patch": 99}, 400, "limit of 6 tiles"),
        ("per-image tile limit above the server's", with_image(data_uri(ok)) | {
            "messages": [{"role": "user", "content": [image_part(data_uri(ok), max_dynamic_patch=99)]}]},
         400, "limit of 6 tiles"),
        ("bad detail", user(image_part(data_uri(ok), detail="ultra")), 400, "detail"),
        ("bad base64", with_image("data:image/png;base64,@@@@"), 400, "not valid base64"),
        ("data URI without base64", with_image("data:image/png,abcd"), 400, "data URI"),
        ("not an image", with_image(data_uri(b"hello, I am text")), 400, "not an image file"),
        ("corrupt image", with_image(data_uri(ok[: len(ok) // 2])), 400, "cannot read the image"),
        ("oversized image bytes", with_image(data_uri(noise_png(300))), 400, "over the server's limit of 200,000"),
        ("too many pixels", with_image(data_uri(png_bytes((1200, 1000)))), 400, "1200x1000"),
        ("decompression bomb", with_image(data_uri(png_claiming(100_000, 100_000))), 400, "decompression-bomb"),
        ("unreachable http URL", with_image("http://127.0.0.1:1/x.png"), 400, "cannot fetch"),
        ("unsupported URL scheme", with_image("ftp://example.invalid/x.png"), 400, "unsupported image URL"),
        ("local file outside the allowed directory", with_image("/etc/hostname"), 400, "outside the allowed"),
        ("path traversal", with_image(f"file://{media_dir}/../../etc/hostname"), 400, "outside the allowed"),
        ("missing local file", with_image(str(media_dir / "missing.png")), 400, "cannot read"),
        ("more images than the context holds", user(*[image_part(data_uri(ok))] * 60, text_part("x")), 400,
         "at most 56 fit"),
        ("prompt longer than the context", user(text_part("x" * 1500)), 400, "does not fit the context"),
        ("body over the size limit", {**GOOD, "padding": "x" * 2_100_000}, 413, "limit"),
    ]


def test_each_bad_request_is_a_4xx_and_the_server_keeps_serving(strict_server, media_dir):
    base, _ = strict_server
    url = base + "/v1/chat/completions"
    with httpx.Client(timeout=30) as http:
        for name, body, status, words in cases(media_dir):
            if isinstance(body, bytes):
                r = http.post(url, content=body, headers={"Content-Type": "application/json"})
            else:
                r = http.post(url, json=body)
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            error = r.json()["error"]
            assert words in error["message"], (name, error["message"])
            assert error["type"] and set(error) == {"message", "type", "param", "code"}
            good = http.post(url, json=GOOD)
            assert good.status_code == 200 and good.json()["choices"][0]["message"]["role"] == "assistant", name
        ok = http.post(url, json=with_image(str(media_dir / "ok.png")))  # an allowed local file still works
        assert ok.status_code == 200
        metrics = http.get(base + "/metrics").text
    assert 'internvl_requests_total{status="400"}' in metrics and "status=\"500\"" not in metrics


def test_local_paths_are_refused_unless_allowed(server, media_dir):
    r = httpx.post(server[0] + "/v1/chat/completions", json=with_image(str(media_dir / "ok.png")))
    assert r.status_code == 400 and "--allowed-local-media-path" in r.json()["error"]["message"]


def test_bad_base64_image_via_openai_client(client):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError, match="not valid base64"):
        client.chat.completions.create(model=MODEL_NAME, max_tokens=2, messages=[
            {"role": "user", "content": [image_part("data:image/png;base64," + base64.b64encode(b"x").decode()[:-1])]}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", max_tokens=2, messages=[{"role": "user", "content": "x"}])
