"""The HTTP layer: FastAPI routes, server-sent-event streaming, OpenAI-style errors, bearer-token auth (the
last two in `handlers.py`, shared with the DvD vision server).

Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, `GET /metrics`, `GET /` (the chat
page). A request is checked in order of cost (body size, JSON, fields, model, messages, capacity, then
images and the prompt, off the event loop) and every refusal is an `APIError` with its 4xx status; the
engine thread sees only requests that fit. The body is parsed by hand rather than by a FastAPI body
model so that invalid JSON and invalid fields answer 400 with OpenAI's error shape, not FastAPI's 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..chat import InternVLChatModel
from ..engine.engine import Engine
from ..models.flash import compress_prompt
from ..processing.tokenizer import Tokenizer
from .config import ServeConfig
from .handlers import check_auth, install_error_handlers, read_body
from .messages import to_conversation
from .metrics import Metrics
from .prompting import Prepared, Prompter, stop_token_ids
from .protocol import (
    APIError,
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    completion_id,
    error_body,
    model_list,
    parse_request,
    usage,
)
from .worker import Job, Worker

CHAT_PATH = "/v1/chat/completions"
POLL_S = 0.5  # how often a waiting non-streaming request checks whether its client is still there


class Server:
    """Everything the routes share: the worker (engine thread), the prompt builder, metrics, capacity."""

    def __init__(self, model: InternVLChatModel, tokenizer: Tokenizer, config: ServeConfig, name: str) -> None:
        self.config, self.name = config, name
        engine = Engine(model, decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                        eos_token_ids=stop_token_ids(model.config.template, tokenizer), max_batch=config.max_batch,
                        max_len=config.max_len, prefill_budget=config.prefill_budget, vir=config.vir)
        self.max_len = engine.max_len
        self.worker = Worker(engine, config.max_batch, config.vision_budget)
        self.prompter = Prompter(model, tokenizer, config, engine.max_len)
        self.model = model
        self.vision = None  # a language server's vision servers (DvD); None: images are encoded here
        if config.role == "language":
            from .vision_client import VisionClient
            self.vision = VisionClient(config.vision_url, config.vision_timeout, model.num_image_token,
                                       model.config.llm.hidden_size, config.api_key,
                                       max_calls=config.max_batch + config.max_queue)
        self.in_flight = 0  # sequences admitted by a handler and not finished (event-loop thread only)
        self.metrics = Metrics({
            "queue_depth": ("Sequences waiting for an engine slot.", lambda: self.worker.queued),
            "running_requests": ("Sequences being decoded.", lambda: self.worker.running),
            "in_flight": ("Sequences accepted and not finished (preparing, queued or running).",
                          lambda: self.in_flight),
            "engine_steps_total": ("Engine steps run.", lambda: self.worker.steps)})

    # ---- capacity ----
    def reserve(self, n: int) -> None:
        capacity = self.config.max_batch + self.config.max_queue
        if not self.worker.alive:
            raise APIError(503, f"the engine is not running ({self.worker.error or 'stopped'})")
        if self.in_flight + n > capacity:
            raise APIError(429, f"the server is busy: {self.in_flight} sequences are running or queued, the limit is "
                                f"{capacity} ({self.config.max_batch} running + {self.config.max_queue} queued); "
                                "retry later", code="queue_full", type="rate_limit_error",
                           headers={"Retry-After": "1"})
        self.in_flight += n

    def release(self, n: int) -> None:
        self.in_flight -= n

    # ---- one chat completion ----
    async def accept(self, request: Request) -> tuple[ChatCompletionRequest, Prepared, Job]:
        """Validate, prepare and submit a request; raises APIError for anything it refuses."""
        req = parse_request(await read_json(request, self.config.max_request_bytes))
        if req.model is not None and req.model != self.name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {self.name!r}",
                           param="model", code="model_not_found")
        unsupported = req.unsupported()
        if unsupported:
            raise APIError(400, unsupported[1], param=unsupported[0])
        if req.n > self.config.max_batch:
            raise APIError(400, f"n={req.n} exceeds the server's batch size of {self.config.max_batch}", param="n")
        conv = to_conversation(req.messages)
        self.prompter.check(req, conv)
        self.reserve(req.n)
        try:
            prepared = await run_in_threadpool(self.prompter.prepare, req, conv)
            job = Job(prepared.prompt_ids, prepared.pixel_values, prepared.params, loop=asyncio.get_running_loop())
            if self.vision is not None and job.pixel_values is not None:
                await self.encode_remotely(job)
            self.worker.submit(job)
        except BaseException:
            self.release(req.n)
            raise
        self.metrics.prompt_tokens += len(prepared.prompt_ids)
        return req, prepared, job

    async def encode_remotely(self, job: Job) -> None:
        """DvD: the job's tiles become image tokens on a vision server, here in the handler, so the engine
        thread keeps decoding meanwhile; a Flash server's compressed tiles lose their unused prompt slots."""
        features, compressed = await self.vision.encode(job.pixel_values)
        if compressed.any():
            job.prompt_ids = compress_prompt(job.prompt_ids, compressed.tolist(), self.model.img_context_token_id,
                                             self.model.num_image_token)
        job.pixel_values, job.image_features = None, features

    def finish(self, job: Job, done: bool, started: float, first: float | None, tokens: int) -> None:
        """Bookkeeping when a request ends, however it ends (once; later calls do nothing)."""
        if job.released:
            return
        job.released = True
        if not done:
            self.worker.cancel(job)
            self.metrics.cancelled += 1
        self.release(job.n)
        self.metrics.completion_tokens += tokens
        if done:
            self.metrics.latency.observe(time.monotonic() - started)
        if first is not None:
            self.metrics.ttft.observe(first - started)

    async def complete(self, request: Request, req: ChatCompletionRequest, prepared: Prepared, job: Job,
                       started: float) -> JSONResponse | None:
        texts, reasons = [[] for _ in range(job.n)], [None] * job.n
        tokens, first, done = 0, None, False
        checked = time.monotonic()
        try:
            while None in reasons:
                events = await job.next(POLL_S)
                if time.monotonic() - checked >= POLL_S:  # tokens may arrive steadily: check by the clock
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return None
                for ev in events or ():
                    if ev[0] == "error":
                        done = True  # failed, not cancelled: the engine thread has dropped it already
                        raise APIError(ev[1], ev[2])
                    if ev[0] == "delta":
                        first = first or time.monotonic()
                        texts[ev[1]].append(ev[2])
                    else:
                        reasons[ev[1]], tokens = ev[2], tokens + ev[3]
            done = True
        finally:
            self.finish(job, done, started, first, tokens)
        answers = [("".join(t), r) for t, r in zip(texts, reasons)]
        return JSONResponse(completion_body(completion_id(), self.name, answers, len(prepared.prompt_ids), tokens))

    async def stream(self, req: ChatCompletionRequest, prepared: Prepared, job: Job, started: float):
        """Server-sent events: a role chunk per choice, content deltas, a finish chunk per choice, the usage
        chunk when asked for, then [DONE]. An engine failure after the stream began is an error event."""
        cid, created = completion_id(), int(time.time())
        with_usage = bool(req.stream_options and req.stream_options.include_usage)

        def sse(index, delta=None, reason=None) -> str:
            return _sse(chunk_body(cid, self.name, created, index, delta, reason, with_usage=with_usage))

        open_, tokens, first, done = set(range(job.n)), 0, None, False
        try:
            yield "".join(sse(i, {"role": "assistant", "content": ""}) for i in range(job.n))
            while open_:
                out = []
                for ev in await job.next():
                    if ev[0] == "error":
                        yield _sse(error_body(ev[2], "server_error" if ev[1] >= 500 else "invalid_request_error"))
                        yield "data: [DONE]\n\n"
                        done = True
                        return
                    if ev[0] == "delta":
                        first = first or time.monotonic()
                        out.append(sse(ev[1], {"content": ev[2]}))
                    else:
                        open_.discard(ev[1])
                        tokens += ev[3]
                        out.append(sse(ev[1], {}, ev[2]))
                yield "".join(out)
            if with_usage:
                yield _sse(chunk_body(cid, self.name, created, None, usage_=usage(len(prepared.prompt_ids), tokens),
                                      with_usage=True))
            yield "data: [DONE]\n\n"
            done = True
        finally:  # also when the client disconnects: the stream is cancelled here and the job with it
            self.finish(job, done, started, first, tokens)


class _EventStream(StreamingResponse):
    """A StreamingResponse that ends its request's bookkeeping even when the client leaves before the body
    generator ever started (then the generator's own `finally` never runs)."""

    def __init__(self, body, on_close) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def read_json(request: Request, limit: int):
    """The request body as JSON (see `read_body` for its size limit and a client that leaves).

    JSON that Python's parser refuses beyond syntax (nesting deeper than its recursion limit, an integer
    literal of more than `sys.get_int_max_str_digits()` digits) is a 400 like any other invalid JSON.
    """
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        reason = str(e)
        if "integer string conversion" in reason:
            reason = f"an integer literal has more than {sys.get_int_max_str_digits()} digits"
        raise APIError(400, f"the request body is not valid JSON ({reason})") from None


def create_app(model: InternVLChatModel, tokenizer: Tokenizer, config: ServeConfig, name: str) -> FastAPI:
    """The FastAPI application serving `model` as `name`; its engine thread runs while the app is up."""
    server = Server(model, tokenizer, config, name)
    page = resources.files("internvl.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.worker.start()
        yield
        server.worker.stop()
        if server.vision is not None:
            server.vision.close()

    app = FastAPI(title="internvl", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    install_error_handlers(app, server.metrics, CHAT_PATH)

    @app.post(CHAT_PATH)
    async def chat_completions(request: Request):
        started = time.monotonic()
        check_auth(request, config.api_key)
        req, prepared, job = await server.accept(request)
        if req.stream:
            server.metrics.requests[200] += 1
            return _EventStream(server.stream(req, prepared, job, started),
                                on_close=lambda: server.finish(job, False, started, None, 0))
        response = await server.complete(request, req, prepared, job, started)
        server.metrics.requests[200] += 1
        return response

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_auth(request, config.api_key)
        return JSONResponse(model_list(name, server.max_len, server.prompter.max_tiles))

    @app.get("/health")
    async def health() -> JSONResponse:
        if not server.worker.alive:
            return JSONResponse({"status": "error", "error": server.worker.error or "engine stopped"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
