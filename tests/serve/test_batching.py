"""Continuous batching behind the API: concurrent streams decode together with the outputs they would have
alone; a full queue answers 429; a client that goes away is cancelled and frees its slot; image encoding
of a new request is split across engine steps instead of stalling running streams."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from serve_helpers import MODEL_NAME, data_uri, image_part, png_bytes, running_server, text_part

from internvl.chat import ChatSession

openai = pytest.importorskip("openai")


def request(i: int) -> dict:
    """Sixteen different requests: text or an image, greedy or seeded sampling, different lengths."""
    content = [text_part(f"Request {i}: what do you see? " + "more " * (i % 5))]
    if i % 3 == 0:
        content.insert(0, image_part(data_uri(png_bytes((100 + 40 * i, 120), (20 * i, 200 - 9 * i, 90)))))
    sampling = {"temperature": 0.9, "seed": i} if i % 4 == 1 else {"temperature": 0}
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 8 + i % 6,
            **sampling}


def recorder(engine):
    """Wrap engine.step and engine.submit (public API) to record batch sizes and the submitted sequences."""
    batches, seqs = [], []
    step, submit = engine.step, engine.submit

    def recording_step():
        advanced = step()
        batches.append(len(advanced))
        return advanced

    def recording_submit(*a, **kw):
        seqs.append(submit(*a, **kw))
        return seqs[-1]
    engine.step, engine.submit = recording_step, recording_submit
    return batches, seqs


def test_sixteen_concurrent_streams_equal_their_requests_alone(tiny):
    with running_server(*tiny, max_batch=8, max_queue=16) as (base, app):
        batches, _ = recorder(app.state.server.worker.engine)
        aclient = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=120)

        async def stream(i):
            chunks = await aclient.chat.completions.create(stream=True, **request(i))
            parts, reason = [], None
            async for c in chunks:
                parts.append(c.choices[0].delta.content or "")
                reason = c.choices[0].finish_reason or reason
            return "".join(parts), reason

        async def everyone():
            try:
                return await asyncio.gather(*(stream(i) for i in range(16)))
            finally:
                await aclient.close()
        together = asyncio.run(everyone())
        assert max(batches) > 1  # they really decoded together
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        alone = []
        for i in range(16):
            r = client.chat.completions.create(**request(i))
            alone.append((r.choices[0].message.content, r.choices[0].finish_reason))
    assert together == alone
    assert len({text for text, _ in alone}) == 16  # independent: no two requests got the same answer


def test_full_queue_answers_429_then_recovers(tiny):
    with running_server(*tiny, max_batch=1, max_queue=1) as (base, app):
        engine = app.state.server.worker.engine
        gate, step = threading.Event(), engine.step
        engine.step = lambda: (gate.wait(30), step())[1]  # hold the engine so requests stay in flight
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", base + "/v1/chat/completions", json=body) as a, \
                    http.stream("POST", base + "/v1/chat/completions", json=body) as b:
                assert a.status_code == b.status_code == 200  # one running, one queued
                full = http.post(base + "/v1/chat/completions", json={**body, "stream": False})
                assert full.status_code == 429 and full.headers["retry-after"] == "1"
                assert "the server is busy" in full.json()["error"]["message"]
                gate.set()
                for r in (a, b):
                    text = "".join(r.iter_text())
                    assert text.endswith("data: [DONE]\n\n")
            after = http.post(base + "/v1/chat/completions", json={**body, "stream": False})
            assert after.status_code == 200


def _wait(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_client_disconnect_cancels_and_frees_the_slot(tiny):
    with running_server(*tiny, max_batch=2) as (base, app):
        server = app.state.server
        engine = server.worker.engine
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Talk."}],
                "max_tokens": 300, "temperature": 0}
        with httpx.Client(timeout=30) as http:
            full = http.post(base + "/v1/chat/completions", json=body).json()
            assert full["choices"][0]["finish_reason"] == "length"  # left alone, it would run to the limit
            _, seqs = recorder(engine)
            step = engine.step
            engine.step = lambda: (time.sleep(0.01), step())[1]  # slow, so nobody finishes by accident
            with http.stream("POST", base + "/v1/chat/completions", json={**body, "stream": True}) as r:
                for line in r.iter_lines():
                    if '"content": "' in line and '"content": ""' not in line:
                        break  # the first piece of the answer: now walk away
            _wait(lambda: server.in_flight == 0 and not engine.has_work())
            assert seqs[0].finish_reason == "cancelled" and len(seqs[0].output_ids) < 300
            with pytest.raises(httpx.ReadTimeout):  # non-streaming: the client gives up waiting
                http.post(base + "/v1/chat/completions", json=body, timeout=0.5)
            _wait(lambda: server.in_flight == 0 and not engine.has_work())
            assert seqs[1].finish_reason == "cancelled" and len(seqs[1].output_ids) < 300
            assert server.metrics.cancelled == 2
            ok = http.post(base + "/v1/chat/completions", json={**body, "max_tokens": 3})
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3


def test_image_encoding_is_split_across_steps_of_running_streams(tiny, tmp_path):
    model, tok = tiny
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes((336, 224), "green"))  # 3 x 2 tiles + thumbnail = 7 tiles
    session = ChatSession(model, tok, {"max_new_tokens": 8, "do_sample": False})
    session.add_image(str(path))
    want = "".join(session.ask("What is it?"))
    with running_server(model, tok, max_batch=4, vision_budget=2) as (base, app):
        engine = app.state.server.worker.engine
        log = []
        step, encode = engine.step, model.extract_feature

        def logged_step():
            time.sleep(0.005)
            advanced = step()
            log.append(("step", len(advanced)))
            return advanced
        engine.step = logged_step
        model.extract_feature = lambda pv: (log.append(("vision", pv.shape[0])), encode(pv))[1]
        try:
            client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
            long = client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=400, stream=True,
                                                  messages=[{"role": "user", "content": "Talk."}])
            next(iter(long))  # the long stream is running
            r = client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=8, messages=[
                {"role": "user", "content": [image_part(data_uri(path.read_bytes())), text_part("What is it?")]}])
            long.close()
        finally:
            model.extract_feature = encode
    vision = [i for i, (kind, _) in enumerate(log) if kind == "vision"]
    assert [log[i][1] for i in vision] == [2, 2, 2, 1]  # 7 tiles, at most 2 per engine iteration
    for a, b in zip(vision, vision[1:]):
        assert any(kind == "step" and advanced for kind, advanced in log[a:b])  # the stream advanced in between
    assert r.choices[0].message.content == want  # encoding in pieces changes nothing


def test_an_engine_failure_fails_its_requests_and_the_server_goes_on(tiny):
    with running_server(*tiny) as (base, app):
        engine = app.state.server.worker.engine
        step, calls = engine.step, []

        def flaky_step():
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("simulated out of memory")
            return step()
        engine.step = flaky_step
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 5}
        with httpx.Client(timeout=30) as http:
            failed = http.post(base + "/v1/chat/completions", json=body)
            assert failed.status_code == 500 and "simulated out of memory" in failed.json()["error"]["message"]
            assert not engine.has_work()  # its sequence left the engine
            ok = http.post(base + "/v1/chat/completions", json=body)
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 5
            assert http.get(base + "/health").json() == {"status": "ok"}
