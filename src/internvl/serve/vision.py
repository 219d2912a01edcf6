"""`internvl serve --role vision`: the vision half of decoupled serving (DvD), the ViT + projector(s) only.

`POST /v1/encode` takes one request's tiles and answers its image tokens (`wire.py` says how both travel).
One encoder thread runs the model: it takes every request waiting, up to `--encode-batch` tiles, and
encodes their tiles in one forward, then routes each request's tiles on their own (a Flash model's
threshold is a quantile over one request's tiles, as in the official code) and answers each request.
Requests that arrive during a forward wait for the next one, so under load each forward is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from ..models.flash import TileFeatures, resolve_vir
from ..models.internvl import InternVL
from .background import BackgroundThread
from .config import ServeConfig
from .handlers import check_auth, install_error_handlers, read_body
from .metrics import Metrics
from .protocol import APIError
from .wire import ENCODE_PATH, MEDIA_TYPE, WireError, pack_features, unpack_tiles

log = logging.getLogger(__name__)


class Encoder(BackgroundThread):
    """The encoder thread and its inbox of (tiles, future) pairs."""

    thread_name = "internvl-vision"

    def __init__(self, model: InternVL, batch_tiles: int, vir: str = "auto") -> None:
        self.model, self.batch_tiles = model, batch_tiles
        self.mode = resolve_vir(model.config, vir)
        from ..precision import plan_of
        # tiles go in the vision phase's dtype (the model computes its precision plan's vision phase)
        self.device, self.dtype = next(model.parameters()).device, plan_of(model).vision
        self._cond = threading.Condition()
        self._inbox: list[tuple[torch.Tensor, asyncio.Future]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # forwards run
        self.tiles = 0  # tiles encoded
        self.waiting_tiles = 0
        self.error: str | None = None

    def submit(self, tiles: torch.Tensor) -> asyncio.Future:
        """Queue one request's tiles; the future resolves to (features (M, D), compressed (N,) bool)."""
        future = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._stopping or not self.alive:
                raise APIError(503, "the vision encoder is not running"
                               + (f" ({self.error})" if self.error else ""))
            self._inbox.append((tiles, future))
            self.waiting_tiles += tiles.shape[0]
            self._cond.notify()
        return future

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    batch = self._take()
                    if batch is None:
                        return
                    self._encode(batch)
        except BaseException as e:  # a dead encoder must say so, not leave requests waiting
            self.error = f"{type(e).__name__}: {e}"
            log.exception("the vision encoder thread stopped")
        finally:
            with self._cond:
                self._stopping = True
                left, self._inbox = self._inbox, []
            for _, future in left:
                _resolve(future, error=APIError(503, "the vision server is shutting down"))

    def _take(self) -> list[tuple[torch.Tensor, asyncio.Future]] | None:
        """The oldest waiting requests whose tiles fit one forward (always at least one), or None to stop."""
        with self._cond:
            while not (self._stopping or self._inbox):
                self._cond.wait()
            if self._stopping:
                return None
            batch, tiles = [], 0
            while self._inbox and (not batch or tiles + self._inbox[0][0].shape[0] <= self.batch_tiles):
                item = self._inbox.pop(0)
                batch.append(item)
                tiles += item[0].shape[0]
            self.waiting_tiles -= tiles
            return batch

    def _encode(self, batch: list[tuple[torch.Tensor, asyncio.Future]]) -> None:
        batch = [(t, f) for t, f in batch if not f.cancelled()]  # clients that left need no forward
        if not batch:
            return
        try:
            pixels = torch.cat([t for t, _ in batch]).to(self.device, self.dtype)
            encoded = self.model.encode_tiles(pixels, self.mode)
        except Exception as e:  # e.g. out of memory: these requests fail, the server goes on
            log.exception("encoding a batch of %d requests failed", len(batch))
            for _, future in batch:
                _resolve(future, error=APIError(500, f"internal error while encoding: {type(e).__name__}: {e}"))
            return
        self.batches += 1
        start = 0
        for tiles, future in batch:
            n = tiles.shape[0]
            part = TileFeatures(*(None if x is None else x[start:start + n]
                                  for x in (encoded.full, encoded.small, encoded.probs)))
            start += n
            routed = self.model.route_features(part, self.mode)
            self.tiles += n
            _resolve(future, result=(routed.tokens.cpu(), routed.compressed.cpu()))


def _resolve(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    try:
        future.get_loop().call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop is closed: nobody is waiting any more
        pass


def create_vision_app(model: InternVL, config: ServeConfig, name: str) -> FastAPI:
    """The vision server's FastAPI application: `POST /v1/encode`, `GET /health`, `GET /metrics`."""
    encoder = Encoder(model, config.encode_batch, config.vir)
    cfg = model.config
    max_tiles = config.max_images * ((config.max_tiles or cfg.max_dynamic_patch) + int(cfg.use_thumbnail))
    metrics = Metrics({
        "encode_batches_total": ("Vision forwards run.", lambda: encoder.batches),
        "encoded_tiles_total": ("Tiles encoded.", lambda: encoder.tiles),
        "waiting_tiles": ("Tiles waiting for a forward.", lambda: encoder.waiting_tiles)})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        encoder.start()
        yield
        encoder.stop()

    app = FastAPI(title="internvl vision", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.encoder = encoder

    install_error_handlers(app, metrics, ENCODE_PATH)

    @app.post(ENCODE_PATH)
    async def encode(request: Request) -> Response:
        started = time.monotonic()
        check_auth(request, config.api_key)
        body = await read_body(request, config.max_request_bytes)
        try:
            tiles = await run_in_threadpool(unpack_tiles, bytes(body), cfg.image_size, max_tiles)
        except WireError as e:
            raise APIError(400, str(e)) from None
        features, compressed = await encoder.submit(tiles)
        out = await run_in_threadpool(pack_features, features, compressed, model.num_image_token)
        metrics.requests[200] += 1
        metrics.latency.observe(time.monotonic() - started)
        return Response(out, media_type=MEDIA_TYPE)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not encoder.alive:
            return JSONResponse({"status": "error", "error": encoder.error or "encoder stopped"}, 503)
        return JSONResponse({"status": "ok", "role": "vision", "model": name})

    @app.get("/metrics")
    async def metrics_() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
