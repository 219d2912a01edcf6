"""The OpenAI API through the real `openai` client: answers equal `internvl chat`'s (ChatSession) for the same
images and questions, streamed and not; parameters, usage, models, health, metrics, page."""

from __future__ import annotations

import http.server
import threading

import httpx
import pytest
from serve_helpers import MODEL_NAME, data_uri, image_part, png_bytes, running_server, text_part

from internvl.chat import ChatSession
from internvl.processing.image import load_image

N = 10  # answer tokens: enough to compare, few enough to stay fast


def cli_answers(tiny, turns, max_tokens=N):
    """What `internvl chat` answers: turns of (image paths, question), greedy, one ChatSession."""
    model, tok = tiny
    session = ChatSession(model, tok, {"max_new_tokens": max_tokens, "do_sample": False})
    answers = []
    for paths, question in turns:
        for p in paths:
            session.add_image(str(p))
        answers.append("".join(session.ask(question)))
    return answers


def ask(client, messages, stream=False, **kw):
    kw = {"max_tokens": N, "temperature": 0, **kw}
    if not stream:
        r = client.chat.completions.create(model=MODEL_NAME, messages=messages, **kw)
        return r.choices[0].message.content, r
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    paths = {"blue": d / "blue.png", "red": d / "red.jpg"}
    paths["blue"].write_bytes(png_bytes((300, 100), "blue"))
    paths["red"].write_bytes(png_bytes((120, 260), "red", "JPEG"))
    return paths


def uri(path) -> str:
    return data_uri(path.read_bytes(), "image/jpeg" if path.suffix == ".jpg" else "image/png")


def test_one_image_stream_and_not_equal_the_cli(client, tiny, images):
    (want,) = cli_answers(tiny, [([images["blue"]], "What is in the image?")])
    msgs = [{"role": "user", "content": [image_part(uri(images["blue"])), text_part("What is in the image?")]}]
    text, r = ask(client, msgs)
    assert text == want and want
    assert r.choices[0].finish_reason in ("stop", "length") and r.model == MODEL_NAME
    assert r.usage.completion_tokens <= N and r.usage.prompt_tokens > 7 * 16  # 6 tiles + thumbnail of 16 tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    streamed, chunks = ask(client, msgs, stream=True)
    assert streamed == want
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1  # really streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == r.choices[0].finish_reason


def test_two_images_and_multi_turn_equal_the_cli(client, tiny, images):
    turns = [([images["blue"], images["red"]], "Compare them."), ([], "And the second one?"),
             ([images["red"]], "One more image.")]
    want = cli_answers(tiny, turns)
    assert len(set(want)) == 3
    msgs = [{"role": "user", "content": [image_part(uri(images["blue"])), image_part(uri(images["red"])),
                                         text_part("Compare them.")]}]
    got = [ask(client, msgs)[0]]
    msgs += [{"role": "assistant", "content": got[0]}, {"role": "user", "content": "And the second one?"}]
    got.append(ask(client, msgs, stream=True)[0])
    msgs += [{"role": "assistant", "content": got[1]},
             {"role": "user", "content": [image_part(uri(images["red"])), text_part("One more image.")]}]
    got.append(ask(client, msgs)[0])
    assert got == want


def test_sampling_parameters(client):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    a = ask(client, msgs, temperature=1.0, seed=7, max_tokens=12)[0]
    b = ask(client, msgs, temperature=1.0, seed=7, max_tokens=12, stream=True)[0]
    c = ask(client, msgs, temperature=1.0, seed=8, max_tokens=12)[0]
    assert a == b != c
    r = client.chat.completions.create(model=MODEL_NAME, messages=msgs, n=3, temperature=1.0, top_p=0.9, seed=1,
                                       max_completion_tokens=6)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert len({ch.message.content for ch in r.choices}) > 1  # each choice has its own seed
    assert 0 < r.usage.completion_tokens <= 3 * 6  # the prompt is counted once, answers add up
    streamed = ["", "", ""]
    for chunk in client.chat.completions.create(model=MODEL_NAME, messages=msgs, n=3, temperature=1.0, top_p=0.9,
                                                seed=1, max_completion_tokens=6, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == [ch.message.content for ch in r.choices]
    greedy = ask(client, msgs, max_tokens=12)[0]
    cut = greedy[3:5]
    stopped, r = ask(client, msgs, max_tokens=12, stop=[cut])
    assert stopped == greedy[:greedy.index(cut)] and r.choices[0].finish_reason == "stop"


def test_image_by_http_url_and_by_allowed_local_path(tiny, images, tmp_path):
    openai = pytest.importorskip("openai")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(images["blue"].parent))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with running_server(*tiny, allowed_local_media_path=str(images["blue"].parent)) as (base, _):
            client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
            url = f"http://127.0.0.1:{httpd.server_address[1]}/blue.png"
            answers = [ask(client, [{"role": "user", "content": [image_part(u), text_part("What?")]}])[0]
                       for u in (uri(images["blue"]), url, str(images["blue"]), "file://" + str(images["blue"]))]
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(set(answers)) == 1


def test_tile_limit_extension_changes_the_prompt(client, images):
    msgs = [{"role": "user", "content": [image_part(uri(images["blue"])), text_part("What?")]}]
    full = ask(client, msgs)[1].usage.prompt_tokens
    one = ask(client, msgs, extra_body={"max_dynamic_patch": 1})[1].usage.prompt_tokens
    low = ask(client, [{"role": "user", "content": [image_part(uri(images["blue"]), detail="low"),
                                                      text_part("What?")]}])[1].usage.prompt_tokens
    per_image = ask(client, [{"role": "user", "content": [image_part(uri(images["blue"]), max_dynamic_patch=2),
                                                            text_part("What?")]}])[1].usage.prompt_tokens
    tiles = {k: load_image(images["blue"], input_size=112, max_num=k).shape[0] for k in (1, 2, 6)}
    assert tiles[6] > tiles[2] > tiles[1] == 1
    assert full - one == (tiles[6] - 1) * 16 and one == low  # 16 tokens per tile
    assert per_image - one == (tiles[2] - 1) * 16


def test_models_health_metrics_and_page(server, client):
    base, _ = server
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    metrics = httpx.get(base + "/metrics").text
    for name in ("requests_total{status=\"200\"}", "prompt_tokens_total", "completion_tokens_total",
                 "queue_depth", "running_requests", "request_latency_seconds_bucket",
                 "time_to_first_token_seconds_count"):
        assert "internvl_" + name in metrics
    served = [line for line in metrics.splitlines() if line.startswith('internvl_requests_total{status="200"}')]
    assert int(served[0].split()[-1]) >= 1
    page = httpx.get(base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page.text and 'id="tiles"' in page.text
    missing = httpx.get(base + "/nope")
    assert missing.status_code == 404 and "error" in missing.json()
