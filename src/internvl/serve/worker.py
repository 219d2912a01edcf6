"""The engine thread: the one place the synchronous `Engine` runs, bridged to asyncio request handlers.

Handlers hand jobs (and cancellations) to the thread through a locked inbox; the thread loops while there
is work: take the inbox, encode a few image tiles of waiting jobs, admit jobs into free engine slots, run
one engine step (which decodes every running request together and prefills the newly admitted ones under
the engine's prefill token budget), and post each job's new text to its asyncio queue with
`loop.call_soon_threadsafe`. Image encoding is split into `vision_budget` tiles per step here, before a job
is admitted, so a request with many tiles delays running streams by a bounded amount per step instead of
by its whole vision pass. A cancelled job's sequences leave the engine at once, freeing their slots. A job
whose sequence the engine failed (see `Engine`) gets an error event; the jobs beside it are untouched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from ..engine.engine import Engine
from ..engine.sampling import SamplingParams
from ..engine.sequence import Sequence
from ..errors import ContextTooLongError
from ..models.flash import TileFeatures, compress_prompt
from .background import BackgroundThread

log = logging.getLogger(__name__)

# Events posted to a job's queue, in lists (one list per engine step):
#   ("delta", choice, text) | ("finish", choice, finish_reason, completion_tokens) | ("error", status, message)
Event = tuple


@dataclass(eq=False)
class Job:
    """One request in the engine thread: n choices over one prompt, and the queue its events go to."""

    prompt_ids: list[int]
    pixel_values: torch.Tensor | None
    params: list[SamplingParams]
    loop: asyncio.AbstractEventLoop
    image_features: torch.Tensor | None = None  # (M, D) already encoded elsewhere (a DvD vision server)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    released: bool = False  # event-loop side: the handler has done its end-of-request bookkeeping
    # Engine-thread state.
    seqs: list[Sequence] = field(default_factory=list)
    open: set[int] = field(default_factory=set)  # choices not finished yet
    feature_chunks: list[TileFeatures] = field(default_factory=list)
    tiles_encoded: int = 0

    @property
    def n(self) -> int:
        return len(self.params)

    @property
    def tiles(self) -> int:
        return 0 if self.pixel_values is None else self.pixel_values.shape[0]

    def post(self, events: list[Event]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, events)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    async def next(self, timeout: float | None = None) -> list[Event] | None:
        """The next list of events, or None after `timeout` seconds without any."""
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except asyncio.TimeoutError:
            return None


class Worker(BackgroundThread):
    thread_name = "internvl-engine"

    def __init__(self, engine: Engine, max_batch: int, vision_budget: int = 4) -> None:
        self.engine, self.max_batch, self.vision_budget = engine, max_batch, vision_budget
        self._cond = threading.Condition()
        self._inbox: list[tuple[str, Job]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pending: deque[Job] = deque()  # engine thread only: not admitted yet
        self._live: list[Job] = []  # engine thread only: sequences in the engine
        self.queued = 0  # sequences waiting for a slot (for metrics; written by the engine thread)
        self.running = 0  # sequences in the engine
        self.steps = 0
        self.error: str | None = None  # why the thread died, if it did

    # ---- called from the event loop ----
    def submit(self, job: Job) -> None:
        self._send("submit", job)

    def cancel(self, job: Job) -> None:
        self._send("cancel", job)

    def _send(self, kind: str, job: Job) -> None:
        with self._cond:
            if self._stopping or not self.alive:  # nobody would ever take it: answer now rather than hang
                if kind == "submit":
                    job.post([("error", 503, "the server is shutting down" if self.error is None
                               else f"the engine stopped: {self.error}")])
                return
            self._inbox.append((kind, job))
            self._cond.notify()

    # ---- the engine thread ----
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._iterate():
                    pass
        except BaseException as e:  # a dead engine thread must say so, not hang every request
            self.error = f"{type(e).__name__}: {e}"
            log.exception("the engine thread stopped")
        finally:
            with self._cond:
                self._stopping = True  # from now on _send answers submissions itself
                left = [job for kind, job in self._inbox if kind == "submit"]
                self._inbox = []
            for job in left + list(self._pending) + list(self._live):
                self._fail(job, 503, "the server is shutting down" if self.error is None
                           else f"the engine stopped: {self.error}")

    def _iterate(self) -> bool:
        with self._cond:
            while not (self._stopping or self._inbox or self._pending or self._live):
                self._cond.wait()
            if self._stopping:
                return False
            inbox, self._inbox = self._inbox, []
        for kind, job in inbox:
            if kind == "submit":
                self._pending.append(job)
            else:
                self._drop(job)
        self._encode_images()
        self._admit()
        if self.engine.has_work():
            try:
                self.engine.step()
                self.steps += 1
            except Exception as e:  # a bug or out of memory: fail what ran, keep serving
                log.exception("engine step failed")
                for job in list(self._live):
                    self._fail(job, 500, f"internal error in the engine step: {type(e).__name__}: {e}")
        self._publish()
        self.queued = sum(j.n for j in self._pending)
        self.running = sum(len(j.open) for j in self._live)
        return True

    def _encode_images(self) -> None:
        """Encode up to `vision_budget` tiles of waiting jobs, oldest first (features are kept per job)."""
        budget = self.vision_budget
        for job in list(self._pending):
            if budget <= 0:
                break
            if job.tiles_encoded >= job.tiles:
                continue
            chunk = job.pixel_values[job.tiles_encoded:job.tiles_encoded + budget]
            try:
                feats = self.engine.model.encode_tiles(chunk.to(self.engine.device, self.engine.precision.vision),
                                                       self.engine.vir)
            except Exception as e:
                log.exception("image encoding failed")
                self._fail(job, 500, f"internal error while encoding the images: {type(e).__name__}: {e}")
                continue
            job.feature_chunks.append(feats)
            job.tiles_encoded += chunk.shape[0]
            budget -= chunk.shape[0]

    def _admit(self) -> None:
        """Jobs whose images are encoded go into the engine while their choices fit its slots; a job still
        being encoded lets ready ones behind it pass, but a ready one that does not fit stops admission."""
        free = self.max_batch - sum(len(j.open) for j in self._live)
        for job in list(self._pending):
            if job.tiles_encoded < job.tiles:
                continue
            if job.n > free and self._live:
                break
            self._pending.remove(job)
            features = self._route(job) if job.feature_chunks else job.image_features
            job.feature_chunks, job.image_features = [], None
            try:
                for params in job.params:
                    job.seqs.append(self.engine.submit(job.prompt_ids, job.pixel_values, params))
            except (ContextTooLongError, ValueError) as e:  # prepare() checks this first; keep the thread alive
                for seq in job.seqs:
                    self.engine.cancel(seq)
                job.post([("error", 400, str(e))])
                continue
            for seq in job.seqs:
                seq.image_features = features  # already encoded: the engine's prefill uses them as they are
            job.open = set(range(job.n))
            job.pixel_values = None  # the sequences hold what they need
            self._live.append(job)
            free -= job.n

    def _route(self, job: Job) -> torch.Tensor:
        """The job's image tokens from its encoded chunks; on a Flash model its tiles are routed together
        (the threshold is a quantile over the request's tiles) and compressed tiles' prompt slots dropped."""
        model = self.engine.model
        routed = model.route_features(TileFeatures.cat(job.feature_chunks), self.engine.vir)
        if routed.compressed.any():
            job.prompt_ids = compress_prompt(job.prompt_ids, routed.compressed.tolist(), model.img_context_token_id,
                                             model.num_image_token)
        return routed.tokens

    def _publish(self) -> None:
        for job in list(self._live):
            failed = next((job.seqs[i] for i in sorted(job.open) if job.seqs[i].error is not None), None)
            if failed is not None:  # the engine ended this request alone; its neighbours go on
                self._fail(job, 500, f"internal error in the engine: {failed.error}")
                continue
            events: list[Event] = []
            for i in sorted(job.open):
                seq = job.seqs[i]
                delta = seq.take_delta()
                if delta:
                    events.append(("delta", i, delta))
                if seq.finished:
                    events.append(("finish", i, seq.finish_reason, len(seq.output_ids)))
                    job.open.discard(i)
            if events:
                job.post(events)
            if not job.open:
                self._live.remove(job)

    def _drop(self, job: Job) -> None:
        """A cancelled job (its client went away): out of the queue, or out of the engine and its slots."""
        if job in self._pending:
            self._pending.remove(job)
        if job in self._live:
            for i in job.open:
                self.engine.cancel(job.seqs[i])
            job.open.clear()
            self._live.remove(job)

    def _fail(self, job: Job, status: int, message: str) -> None:
        try:
            self._drop(job)
        except Exception:  # the engine is in a bad state already; the error below is what matters
            log.exception("cancelling a failed job")
            if job in self._live:
                self._live.remove(job)
        job.post([("error", status, message)])
