"""DvD (decoupled vision/language serving): a `--role vision` server and a `--role language` server on
loopback answer exactly as the monolithic server does (text, one image, several images, history, streaming,
concurrent requests; greedy, fp32); the vision server batches waiting requests into one forward and refuses
malformed bodies with a 4xx; a vision server that is down, silent or answers garbage costs only the requests
with images (a 503/502 naming its URL, never a hang), and the language server recovers when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest
import torch
from serve_helpers import (MODEL_NAME, data_uri, image_part, png_bytes, requests_counted, running_server, serving,
                           text_part)

from internvl.chat import from_pretrained
from internvl.checkpoint.loader import LANGUAGE_PARTS, VISION_PARTS
from internvl.errors import ConfigError
from internvl.serve.config import ServeConfig
from internvl.serve import vision
from internvl.serve.vision import Encoder, create_vision_app
from internvl.serve.vision_client import VisionClient
from internvl.serve.wire import ENCODE_PATH, MEDIA_TYPE, pack_features, pack_tiles, unpack_features

N = 10  # answer tokens
TIMEOUT = 60  # no test request may take longer; a hang fails instead of blocking the suite


# ---------------------------------------------------------------- servers

def vision_app(model, **overrides):
    config = replace(ServeConfig(model="unused", dtype="fp32", port=0), role="vision", max_images=4,
                     max_request_bytes=8 * 2**20, **overrides)
    return create_vision_app(model, config, MODEL_NAME)


@contextlib.contextmanager
def vision_server(model, port: int = 0, **overrides):
    app = vision_app(model, **overrides)
    with serving(app, port) as url:
        yield url
    assert not app.state.encoder.alive, "the encoder thread outlived the server"


def language_server(language, urls, **overrides):
    return running_server(*language, role="language", vision_url=tuple(urls), max_batch=8, **overrides)


@pytest.fixture(scope="module")
def vision_model(tiny_ckpt):
    return from_pretrained(tiny_ckpt, dtype=torch.float32, parts=VISION_PARTS)[0]


@pytest.fixture(scope="module")
def language(tiny_ckpt):
    return from_pretrained(tiny_ckpt, dtype=torch.float32, parts=LANGUAGE_PARTS)


@pytest.fixture(scope="module")
def vision_url(vision_model):
    with vision_server(vision_model) as url:
        yield url


@pytest.fixture(scope="module")
def dvd(language, vision_url):
    with language_server(language, [vision_url]) as (url, _):
        yield url


@pytest.fixture(scope="module")
def mono(server):
    return server[0]


def dead_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ---------------------------------------------------------------- requests

def image_msg(*colors_sizes, question="What is in the image?"):
    parts = [image_part(data_uri(png_bytes(size, color))) for color, size in colors_sizes]
    return [{"role": "user", "content": [*parts, text_part(question)]}]


def post(url, messages, **kw):
    return httpx.post(url + "/v1/chat/completions", timeout=TIMEOUT,
                      json={"messages": messages, "max_tokens": N, "temperature": 0, **kw})


def answer(url, messages, **kw) -> str:
    r = post(url, messages, **kw)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def streamed(url, messages) -> str:
    body = {"messages": messages, "max_tokens": N, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks), chunks
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


REQUESTS = {
    "text": [{"role": "user", "content": "Say something."}],
    "one image": image_msg(("blue", (300, 100))),
    "several images": image_msg(("blue", (300, 100)), ("red", (120, 260)), ("green", (64, 64)),
                                question="Compare the images."),
    "history with images": [
        {"role": "user", "content": [image_part(data_uri(png_bytes((200, 90), "yellow"))), text_part("What?")]},
        {"role": "assistant", "content": "A shape."},
        {"role": "user", "content": [image_part(data_uri(png_bytes((90, 200), "purple"))), text_part("And now?")]}],
}


# ---------------------------------------------------------------- the same answers

@pytest.mark.parametrize("kind", list(REQUESTS))
def test_dvd_answers_equal_the_monolithic_server(mono, dvd, kind):
    want = answer(mono, REQUESTS[kind])
    assert want
    assert answer(dvd, REQUESTS[kind]) == want
    assert streamed(dvd, REQUESTS[kind]) == want == streamed(mono, REQUESTS[kind])


def test_concurrent_image_requests_equal_the_monolithic_answers(mono, dvd):
    colors = ["blue", "red", "green", "orange", "cyan", "magenta"]
    msgs = [image_msg((c, (60 + 40 * i, 200 - 20 * i))) for i, c in enumerate(colors)]
    want = [answer(mono, m) for m in msgs]
    with ThreadPoolExecutor(len(msgs)) as pool:
        got = list(pool.map(lambda m: answer(dvd, m), msgs))
    assert got == want
    assert len(set(want)) > 1  # the images matter, so a mix-up would show


def test_the_language_server_runs_no_vision_model_and_counts_prompt_tokens_alike(mono, dvd, language):
    assert language[0].vision_model is None and language[0].mlp1 is None
    msgs = REQUESTS["one image"]
    assert post(dvd, msgs).json()["usage"] == post(mono, msgs).json()["usage"]


# ---------------------------------------------------------------- the vision server

def test_encoder_batches_waiting_requests_and_routes_each_alone(vision_model):
    torch.manual_seed(1)
    requests = [torch.randn(n, 3, 112, 112) for n in (3, 2, 4)]
    encoder = Encoder(vision_model, batch_tiles=5)
    encoder.start()

    async def run():
        with encoder._cond:  # hold the thread off until all three wait: it must then batch them
            futures = [encoder.submit(t) for t in requests]
        return await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    try:
        results = asyncio.run(run())
    finally:
        encoder.stop()
    assert encoder.batches == 2 and encoder.tiles == 9  # 3 + 2 tiles fit 5, then 4
    for tiles, (features, compressed) in zip(requests, results):
        alone = vision_model.encode_images(tiles)
        assert features.shape == (tiles.shape[0] * 16, 128) and not compressed.any()
        torch.testing.assert_close(features, alone.tokens, rtol=1e-5, atol=1e-5)


def encode_post(url, content, **kw):
    return httpx.post(url + ENCODE_PATH, content=content, headers={"Content-Type": MEDIA_TYPE}, timeout=TIMEOUT,
                      **kw)


def test_encode_endpoint_answers_the_wire_format(vision_url, vision_model):
    tiles = torch.randn(2, 3, 112, 112).to(torch.bfloat16)
    r = encode_post(vision_url, pack_tiles(tiles))
    assert r.status_code == 200 and r.headers["content-type"] == MEDIA_TYPE
    features, compressed = unpack_features(r.content, 2, 16, 128)
    assert compressed.tolist() == [False, False]
    torch.testing.assert_close(features, vision_model.encode_images(tiles.float()).tokens, rtol=1e-5, atol=1e-5)


def safetensors_with(**tensors) -> bytes:
    from safetensors.torch import save
    return save(tensors)


@pytest.mark.parametrize("body,status,words", [
    (b"", 400, "empty"),
    (b"not a safetensors file at all", 400, "not a valid safetensors"),
    (b"\xff" * 8 + b"{}", 400, "not a valid safetensors"),
    (pack_tiles(torch.zeros(1, 3, 112, 112))[:-5], 400, "not a valid safetensors"),
    (safetensors_with(pixels=torch.zeros(1, 3, 112, 112)), 400, "exactly the tensors pixel_values"),
    (safetensors_with(pixel_values=torch.zeros(1, 3, 112, 112), extra=torch.zeros(1)), 400, "exactly the tensors"),
    (pack_tiles(torch.zeros(1, 3, 112, 112, dtype=torch.int32)), 400, "dtype"),
    (pack_tiles(torch.zeros(1, 3, 96, 96)), 400, "(N, 3, 112, 112)"),
    (pack_tiles(torch.zeros(3, 112, 112)), 400, "shape (3, 112, 112)"),
    (pack_tiles(torch.zeros(0, 3, 112, 112)), 400, "N >= 1"),
    (pack_tiles(torch.full((1, 3, 112, 112), float("nan"))), 400, "NaN"),
    (pack_tiles(torch.zeros(29, 3, 112, 112, dtype=torch.bfloat16)), 400, "limit of 28"),  # 4 images x 7
    (b"\0" * (8 * 2**20 + 1), 413, "limit"),
])
def test_malformed_encode_requests_are_4xx(vision_url, body, status, words):
    r = encode_post(vision_url, body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_encode_endpoint_method_path_and_health(vision_url):
    assert httpx.get(vision_url + ENCODE_PATH).status_code == 405
    assert httpx.post(vision_url + "/v1/chat/completions", json={}).status_code == 404
    assert httpx.get(vision_url + "/health").json()["status"] == "ok"
    assert "internvl_encoded_tiles_total" in httpx.get(vision_url + "/metrics").text


def test_the_vision_server_counts_and_logs_failures_as_the_chat_server_does(vision_model, monkeypatch, caplog):
    """Both servers install one set of error handlers: a refusal is a 4xx and a bug a 500, each with an error
    body and counted by status in /metrics, and a client that leaves mid-upload is a 499 logged at INFO."""
    def broken(*args):
        raise RuntimeError("injected packing failure")

    tiles = pack_tiles(torch.zeros(1, 3, 112, 112))
    with vision_server(vision_model) as url:
        assert encode_post(url, b"").status_code == 400
        with monkeypatch.context() as m:
            m.setattr(vision, "pack_features", broken)
            r = encode_post(url, tiles)
        assert r.status_code == 500, r.text
        assert r.json()["error"]["type"] == "server_error"
        assert "RuntimeError: injected packing failure" in r.json()["error"]["message"]
        with caplog.at_level(logging.INFO):
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as s:
                s.sendall(f"POST {ENCODE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: {MEDIA_TYPE}\r\n"
                          "Content-Length: 5000\r\n\r\n".encode() + tiles[:100])
            deadline = time.monotonic() + 10
            while requests_counted(url, 499) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert encode_post(url, tiles).status_code == 200
        assert {s: requests_counted(url, s) for s in (200, 400, 499, 500)} == {200: 1, 400: 1, 499: 1, 500: 1}
    assert any("disconnected after sending 100 bytes" in r.getMessage() for r in caplog.records)


def test_api_key_guards_the_encode_endpoint_and_the_language_server_sends_it(mono, language, vision_model):
    with vision_server(vision_model, api_key="k3y") as vurl, language_server(language, [vurl], api_key="k3y") as (lang, _):
        r = encode_post(vurl, pack_tiles(torch.zeros(1, 3, 112, 112)))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(
            lang + "/v1/chat/completions", headers={"Authorization": "Bearer k3y"}, timeout=TIMEOUT,
            json={"messages": REQUESTS["one image"], "max_tokens": N, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == answer(mono, REQUESTS["one image"])


# ---------------------------------------------------------------- failures

def assert_vision_error(r, status, url, words):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert url in error["message"] and words in error["message"], error
    assert error["type"] == "server_error"


def test_a_vision_server_that_is_down_fails_image_requests_only(language):
    url = dead_url()
    with language_server(language, [url]) as (lang, _):
        started = time.monotonic()
        assert_vision_error(post(lang, REQUESTS["one image"]), 503, url, "unreachable")
        assert_vision_error(post(lang, REQUESTS["one image"], stream=True), 503, url, "unreachable")
        assert time.monotonic() - started < 10
        assert answer(lang, REQUESTS["text"])  # text needs no vision server
        assert httpx.get(lang + "/health").json()["status"] == "ok"


def test_a_silent_vision_server_times_out(language):
    with socket.socket() as s:  # accepts connections (the kernel's backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with language_server(language, [url], vision_timeout=1.0) as (lang, _):
            started = time.monotonic()
            assert_vision_error(post(lang, REQUESTS["one image"]), 503, url, "did not answer within 1 s")
            assert time.monotonic() - started < 10
            assert answer(lang, REQUESTS["text"])


@contextlib.contextmanager
def fake_vision_server(status: int, body: bytes):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


WRONG_WIDTH = pack_features(torch.zeros(4 * 16, 64), torch.zeros(4, dtype=torch.bool), 16)


@pytest.mark.parametrize("status,body,code,words", [
    (200, b"garbage", 502, "not a valid safetensors"),
    (200, WRONG_WIDTH, 502, "same model"),
    (400, json.dumps({"error": {"message": "tiles of the wrong size"}}).encode(), 502, "tiles of the wrong size"),
    (503, b"overloaded", 503, "HTTP 503"),
])
def test_a_vision_server_answering_garbage_or_errors_gives_a_5xx(language, status, body, code, words):
    with fake_vision_server(status, body) as url, language_server(language, [url]) as (lang, _):
        assert_vision_error(post(lang, REQUESTS["one image"]), code, url, words)
        assert answer(lang, REQUESTS["text"])


def test_a_down_server_is_skipped_for_the_next_one(mono, language, vision_url):
    want = answer(mono, REQUESTS["one image"])
    with language_server(language, [dead_url(), vision_url]) as (lang, _):
        for _ in range(3):  # whichever server comes first in turn
            assert answer(lang, REQUESTS["one image"]) == want


def test_stopping_the_vision_server_mid_load_gives_errors_then_recovery(mono, language, vision_model):
    msgs = [image_msg((c, (80 + 30 * i, 150))) for i, c in enumerate(["blue", "red", "green", "cyan"] * 2)]
    want = [answer(mono, m) for m in msgs]
    url = dead_url()  # where the vision server will listen, stop and come back
    port = int(url.rsplit(":", 1)[1])
    with language_server(language, [url], vision_timeout=5.0) as (lang, _):
        with ThreadPoolExecutor(len(msgs)) as pool:
            with vision_server(vision_model, port=port):
                assert answer(lang, msgs[0]) == want[0]
                futures = [pool.submit(post, lang, m) for m in msgs]
                time.sleep(0.05)
            # the vision server has stopped, with requests in flight
            outcomes = [f.result(timeout=TIMEOUT) for f in futures]
        for r, w in zip(outcomes, want):  # every request ended: its answer or a clear 5xx, none hung
            assert r.status_code in (200, 503), r.text
            if r.status_code == 200:
                assert r.json()["choices"][0]["message"]["content"] == w
            else:
                assert url in r.json()["error"]["message"]
        assert_vision_error(post(lang, msgs[1]), 503, url, "unreachable")
        assert answer(lang, REQUESTS["text"])
        with vision_server(vision_model, port=port):
            assert answer(lang, msgs[1]) == want[1]  # recovered, without restarting the language server


# ---------------------------------------------------------------- configuration and balancing

@pytest.mark.parametrize("overrides,words", [
    ({"role": "language"}, "needs --vision-url"),
    ({"vision_url": ("http://127.0.0.1:1",)}, "is for --role language"),
    ({"role": "language", "vision_url": ("ftp://host:1",)}, "not an http://HOST:PORT URL"),
    ({"role": "language", "vision_url": ("http://host:99999",)}, "not an http://HOST:PORT URL"),
    ({"role": "language", "vision_url": ("http://a:1", "http://a:1/")}, "twice"),
    ({"role": "language", "vision_url": ("http://a:1",), "vision_timeout": 0.0}, "--vision-timeout"),
    ({"role": "both"}, "--role must be one of"),
])
def test_bad_dvd_settings_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=None) as e:
        ServeConfig(**overrides)
    assert words in str(e.value)


def test_cli_role_flags(capsys):
    from internvl.cli import build_parser, main
    from internvl.serve.config import from_args
    config = from_args(build_parser().parse_args(
        ["serve", "--role", "language", "--vision-url", "http://a:1/", "http://b:2", "--vision-timeout", "3"]))
    assert config.vision_url == ("http://a:1", "http://b:2") and config.vision_timeout == 3
    assert from_args(build_parser().parse_args(["serve"])).role == "all"
    assert main(["serve", "--role", "language", "--port", "0"]) == 2
    assert "needs --vision-url" in capsys.readouterr().err


def test_the_least_loaded_server_goes_first_and_ties_take_turns():
    client = VisionClient(("http://a:1", "http://b:1", "http://c:1"), 1.0, 16, 128)
    assert [client.order()[0] for _ in range(4)] == ["http://a:1", "http://b:1", "http://c:1", "http://a:1"]
    client.in_flight.update({"http://a:1": 2, "http://b:1": 1, "http://c:1": 3})
    assert client.order() == ["http://b:1", "http://a:1", "http://c:1"]


# ---------------------------------------------------------------- DvD with ViR (InternVL3.5-Flash)

@pytest.fixture(scope="module")
def flash_ckpt(tmp_path_factory):
    """A random tiny Flash checkpoint whose router compresses every tile of a request but its lowest-scored."""
    from internvl.checkpoint.loader import save_checkpoint
    from internvl.models.internvl import InternVL
    from internvl.presets import PRESETS
    from internvl.processing.tokenizer import byte_tokenizer
    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = PRESETS["tiny-random"].config.replace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
                                                flash_mode=True, flash_relative_threshold=0.0,
                                                flash_absolute_threshold=0.0)
    model = InternVL(cfg)
    model.init_weights(std=0.5)
    path = save_checkpoint(model, tmp_path_factory.mktemp("flash") / "tiny-flash", "official")
    tok.save_pretrained(path)
    return path


def test_flash_dvd_routes_on_the_vision_server_and_answers_as_chat_and_the_monolithic_server(flash_ckpt, tmp_path):
    from internvl.chat import ChatSession
    image = tmp_path / "wide.png"
    image.write_bytes(png_bytes((400, 100), "blue"))  # several tiles: the router compresses some
    question = "What is in the image?"
    model, tok = from_pretrained(flash_ckpt, dtype=torch.float32)
    session = ChatSession(model, tok, {"max_new_tokens": N, "do_sample": False})  # `internvl chat`, Engine routing
    session.add_image(str(image))
    want = "".join(session.ask(question))
    assert want
    msgs = [{"role": "user", "content": [image_part(data_uri(image.read_bytes())), text_part(question)]}]
    vision = from_pretrained(flash_ckpt, dtype=torch.float32, parts=VISION_PARTS)[0]
    lang = from_pretrained(flash_ckpt, dtype=torch.float32, parts=LANGUAGE_PARTS)
    with running_server(model, tok) as (mono, _), vision_server(vision) as vurl, \
            language_server(lang, [vurl]) as (dvd, _):
        assert answer(mono, msgs) == want
        assert answer(dvd, msgs) == want == streamed(dvd, msgs)
        from internvl.processing.image import load_image
        tiles = load_image(str(image), input_size=112, max_num=6)
        r = encode_post(vurl, pack_tiles(tiles))
        features, compressed = unpack_features(r.content, tiles.shape[0], 16, 128)
        assert tiles.shape[0] > 2 and compressed.sum() == tiles.shape[0] - 1  # all but the lowest-scored
        assert features.shape[0] == 16 + (tiles.shape[0] - 1) * 4


def test_build_app_loads_only_each_roles_half(tiny_ckpt):
    from internvl.serve.server import banner, build_app
    app, name = build_app(ServeConfig(model=str(tiny_ckpt), role="vision", dtype="fp32", device="cpu"))
    model = app.state.encoder.model
    assert model.language_model is None and model.vision_model is not None and name == "tiny"
    assert "/v1/encode" in banner(ServeConfig(role="vision"), name)
    config = ServeConfig(model=str(tiny_ckpt), role="language", vision_url=("http://127.0.0.1:1",), dtype="fp32",
                         device="cpu")
    app, _ = build_app(config)
    model = app.state.server.model
    assert model.vision_model is None and model.mlp1 is None and model.language_model is not None
    assert "http://127.0.0.1:1" in banner(config, name)
