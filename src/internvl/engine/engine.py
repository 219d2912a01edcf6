"""The generation engine: the one path every caller (chat, CLI, server, Best-of-N, eval) generates through.

Continuous batching over a slot-based KV cache: `step()` first admits waiting requests into free slots
(encode their images once, prefill them together in one right-padded forward, sample the first token),
then advances every other running request by one token in a single batched decode. Admission stops at a
prefill token budget, so a burst of long (image) prompts delays running streams by one bounded step,
not by all of them. Requests carry their own sampling parameters and stop rules; finished requests free
their slot at once, so new ones join between decode steps.

Each phase computes in the dtype of the model's precision plan (`precision.py`, `model.precision`): the
vision tower (inside the model) and the prompt forward in `plan.vision` / `plan.prefill`, decode steps and
the KV cache in the stored weights' dtype. A prompt's first-token logits are a one-row product like a decode
step's, so they read the head in the weights' dtype too.

Images are encoded when their request is admitted. On an InternVL3.5-Flash model (`vir`), each request's
tiles are routed on their own (the quantile threshold is per request, as in the official code) and the
request's prompt drops the unused `<IMG_CONTEXT>` slots of its compressed tiles before it is prefilled, so
requests with different routings share a batch like any prompts of different lengths.

A failure is confined to the request that causes it: a row that cannot be sampled ends only its own request,
and when a batched forward raises, its requests are retried one by one (the cache rolled back first), so
only those that fail on their own end with `finish_reason == "error"`; the others go on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import torch

from ..errors import ContextTooLongError, GenerationError, ImageSizeError
from ..models.flash import compress_prompt, resolve_vir
from ..models.internvl import InternVL
from ..precision import compute_in, plan_of
from ..runtime import matmul_mode
from .kv_cache import KVCache
from .sampling import SamplingParams, sample
from .sequence import Sequence

log = logging.getLogger(__name__)


class Engine:
    """Generate from token ids (+ images) with any mix of requests; no tokenization inside except decoding."""

    def __init__(self, model: InternVL, decode=None, eos_token_ids: Iterable[int] = (), max_batch: int = 8,
                 max_len: int | None = None, prefill_budget: int = 4096, vir: str = "auto") -> None:
        """
        Args:
            model: an InternVL model in eval mode (any dtype/device).
            decode: ids -> text, for stop strings and streaming (e.g. `tokenizer.decode`); None disables text.
            eos_token_ids: tokens that end every request (the template separator, EOS).
            max_batch: requests decoded together (KV-cache slots).
            max_len: tokens per slot (prompt + output); defaults to the LLM's max_position_embeddings, capped at
                32768. The cache grows to what live requests use, so a large limit costs no memory up front.
            prefill_budget: padded prompt tokens prefilled in one step (at least one request is always admitted).
            vir: the Flash router: auto (the config's flash_mode decides), off (every tile keeps its tokens)
                or always (every tile compressed; needs a Flash checkpoint).
        """
        self.vir = resolve_vir(model.config, vir)  # "off" | "always" | "route"; a bad value fails here
        self.model = model
        self.decode = decode or (lambda ids: "")
        self.eos = set(eos_token_ids)
        llm = model.config.llm
        self.max_len = max_len or min(llm.max_position_embeddings, 32768)
        self.prefill_budget = prefill_budget
        param = next(model.parameters())
        self.precision = plan_of(model)  # a plan whose weight dtype is not the model's fails here
        self.device, self.dtype = param.device, param.dtype  # the weights' dtype: decode and the KV cache
        self.cache = KVCache(llm.num_hidden_layers, max_batch, llm.num_key_value_heads, self.max_len,
                             llm.dim_per_head, self.dtype, self.device,
                             windows=[llm.window(i) for i in range(llm.num_hidden_layers)])
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    # ---- requests ----
    def submit(self, prompt_ids: list[int], pixel_values: torch.Tensor | None = None,
               params: SamplingParams | None = None, image_features: torch.Tensor | None = None) -> Sequence:
        """Queue a request. Its images come as tiles (`pixel_values`, encoded and routed here) or already as
        the tokens to place (`image_features` (M, D), e.g. from a vision server; then `prompt_ids` must hold
        exactly M `<IMG_CONTEXT>` slots, compressed tiles' slots already dropped)."""
        params = params or SamplingParams()
        if pixel_values is not None:
            self._check_tiles(pixel_values)
        if pixel_values is not None and image_features is not None:
            raise ValueError("give a request's images as pixel_values or as image_features, not both")
        seq = Sequence(list(prompt_ids), params, pixel_values, image_features)
        if len(seq.prompt_ids) + max(params.max_new_tokens, 1) > self.max_len:
            raise ContextTooLongError(f"prompt of {len(seq.prompt_ids)} tokens + max_new_tokens "
                                      f"{params.max_new_tokens} exceeds the context of {self.max_len} tokens")
        if not seq.prompt_ids:
            raise ValueError("empty prompt")
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self.waiting.append(seq)
        return seq

    def _check_tiles(self, pixel_values: torch.Tensor) -> None:
        size = self.model.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ImageSizeError(
                f"pixel_values have shape {tuple(pixel_values.shape)}, but this model takes tiles of shape "
                f"(N, 3, {size}, {size}): its tile size (config.image_size) is {size}px; load images with "
                f"internvl.load_image(path, input_size={size})")

    def cancel(self, seq: Sequence) -> None:
        """Stop a request now (e.g. its client went away) and free its cache slot."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        if not seq.finished:
            seq.finish_reason = "cancelled"
        self._retire()

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one engine iteration ----
    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Admit what fits, then decode one token for the rest; returns the sequences that advanced."""
        decoding = [s for s in self.running if not s.finished]
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        if decoding:
            self._isolated(decoding, self._decode)
        self._retire()
        return admitted + decoding

    def _isolated(self, seqs: list[Sequence], forward: Callable[[list[Sequence]], None]) -> None:
        """Run `forward` over `seqs` together; if it raises, run each alone, so that only the sequences that
        fail on their own fail. `forward` must leave the cache as it found it when it raises."""
        try:
            forward(seqs)
            return
        except Exception as e:
            if len(seqs) == 1:
                self._fail(seqs[0], e)
                return
            log.warning("a batched step of %d requests failed (%s: %s); running them one by one", len(seqs),
                        type(e).__name__, e)
        for seq in seqs:
            try:
                forward([seq])
            except Exception as e:
                self._fail(seq, e)

    @staticmethod
    def _fail(seq: Sequence, e: Exception) -> None:
        log.warning("request %d failed in the engine: %s: %s", seq.id, type(e).__name__, e, exc_info=e)
        seq.fail(f"{type(e).__name__}: {e}")

    def _admit(self) -> list[Sequence]:
        """Waiting requests for free slots, while their padded prompt tokens stay within the budget."""
        admitted: list[Sequence] = []
        longest = 0
        while self.waiting and len(admitted) < len(self.cache.free):
            longest_if = max(longest, len(self.waiting[0].prompt_ids))
            if admitted and longest_if * (len(admitted) + 1) > self.prefill_budget:
                break
            admitted.append(self.waiting.popleft())
            longest = longest_if
        return admitted

    def _prefill(self, seqs: list[Sequence]) -> None:
        embeds: dict[int, torch.Tensor] = {}
        for seq in seqs:
            seq.slot = self.cache.allocate()
            self.running.append(seq)
            if seq.params.max_new_tokens == 0:
                seq.finish_reason = "length"
                continue
            try:
                embeds[seq.id] = self._embed(seq)
            except Exception as e:  # e.g. image features that do not match the prompt: this request only
                self._fail(seq, e)
        ready = [s for s in seqs if not s.finished]
        if ready:
            self._isolated(ready, lambda group: self._prefill_rows(group, embeds))

    def _embed(self, seq: Sequence) -> torch.Tensor:
        """The prompt's input embeddings (T, D), its images encoded (once), routed and written over <IMG_CONTEXT>."""
        if seq.pixel_values is not None and seq.image_features is None:
            tiles = self.model.encode_tiles(seq.pixel_values.to(self.device, self.precision.vision), self.vir)
            features = self.model.route_features(tiles, self.vir)
            if features.compressed.any():
                seq.prompt_ids = compress_prompt(seq.prompt_ids, features.compressed.tolist(),
                                                 self.model.img_context_token_id, self.model.num_image_token)
            seq.image_features, seq.compressed_tiles = features.tokens, int(features.compressed.sum())
        if seq.image_features is not None:
            seq.image_tokens = seq.image_features.numel() // seq.image_features.shape[-1]
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        with self._prefill_precision():
            embeds = self.model.embed(ids, image_features=seq.image_features)[0].to(self.precision.prefill)
        seq.image_features = seq.pixel_values = None  # used once; free the memory
        return embeds

    def _prefill_rows(self, seqs: list[Sequence], embeds: dict[int, torch.Tensor]) -> None:
        """One right-padded forward over these prompts, then each one's first token."""
        lengths = [len(s.prompt_ids) for s in seqs]
        batch = torch.zeros(len(seqs), max(lengths), self.model.config.llm.hidden_size,
                            dtype=self.precision.prefill, device=self.device)
        for row, seq in enumerate(seqs):
            batch[row, :lengths[row]] = embeds[seq.id]
        slots = [s.slot for s in seqs]
        try:
            view = self.cache.prefill(slots, lengths)
            positions = (view.positions() if self.model.config.v2pe_stride is None
                         else self._v2pe_positions(seqs, lengths))
            with self._prefill_precision():
                hidden = self.model.language_model(batch, positions, view.mask(), view)
            last = hidden[torch.arange(len(seqs), device=self.device), torch.tensor(lengths, device=self.device) - 1]
            picked = self._sample(seqs, self.model.language_model.logits(last.to(self.dtype)))
        except BaseException:
            for slot in slots:  # nothing was stored: the slots are empty again, ready for a retry
                self.cache.lengths[slot] = 0
            raise
        self._advance(seqs, *picked)

    def _decode(self, seqs: list[Sequence]) -> None:
        slots = [s.slot for s in seqs]
        order = sorted(range(len(seqs)), key=lambda i: slots[i])  # contiguous slots read without a copy
        seqs = [seqs[i] for i in order]
        slots = [s.slot for s in seqs]
        before = [self.cache.lengths[s] for s in slots]
        ids = torch.tensor([[s.output_ids[-1] if s.output_ids else s.prompt_ids[-1]] for s in seqs],
                           device=self.device)
        try:
            view = self.cache.step(slots, 1)
            embeds = self.model.language_model.embed_tokens(ids)
            positions = view.positions()
            if self.model.config.v2pe_stride is not None:
                positions = positions + torch.tensor([[s.position_offset] for s in seqs], device=self.device)
            with matmul_mode(rows=len(seqs), dtype=self.dtype, device=self.device):
                hidden = self.model.language_model(embeds, positions, view.mask(), view)
                logits = self.model.language_model.logits(hidden[:, -1])
            picked = self._sample(seqs, logits)
        except BaseException:
            for slot, n in zip(slots, before):  # undo this step's length; its partial writes are never read
                self.cache.lengths[slot] = n
            raise
        self._advance(seqs, *picked)

    def _prefill_precision(self):
        return compute_in(self.precision.prefill, self.precision.weights)

    def _v2pe_positions(self, seqs: list[Sequence], lengths: list[int]) -> torch.Tensor:
        """V2PE positions of right-padded prompts; each request remembers how far its positions run ahead."""
        positions = torch.zeros(len(seqs), max(lengths), dtype=torch.float32, device=self.device)
        for row, seq in enumerate(seqs):
            p = self.model.rope_positions(torch.tensor([seq.prompt_ids], device=self.device))[0]
            positions[row, :len(p)] = p
            seq.position_offset = float(p[-1]) + 1 - len(p)
        return positions

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> tuple[list[int], dict[int, str]]:
        seen = [torch.tensor(s.prompt_ids + s.output_ids, device=self.device)
                if s.params.repetition_penalty != 1.0 else torch.empty(0, dtype=torch.long) for s in seqs]
        return sample(logits, [s.params for s in seqs], [s.generator for s in seqs], seen)

    def _advance(self, seqs: list[Sequence], tokens: list[int], errors: dict[int, str]) -> None:
        for row, (seq, tok) in enumerate(zip(seqs, tokens)):
            if row in errors:
                log.warning("request %d failed in the engine: %s", seq.id, errors[row])
                seq.fail(errors[row])
                continue
            try:
                seq.append(tok, self.decode, self.eos)
            except Exception as e:  # e.g. a decode callback that raises: this request only
                self._fail(seq, e)
                continue
            if not seq.finished and self.cache.lengths[seq.slot] + 1 > self.max_len:
                seq.finish_reason = "length"

    def _retire(self) -> None:
        for seq in [s for s in self.running if s.finished]:
            self.running.remove(seq)
            self.cache.release(seq.slot)

    # ---- conveniences ----
    def generate(self, requests: list[tuple[list[int], torch.Tensor | None, SamplingParams]]) -> list[Sequence]:
        """Run a list of (prompt_ids, pixel_values, params) to completion; results in request order.

        Raises:
            GenerationError: a request failed in the engine (raised once all have finished).
        """
        seqs = [self.submit(*r) for r in requests]
        while self.has_work():
            self.step()
        for i, seq in enumerate(seqs):
            if seq.error is not None:
                raise GenerationError(f"request {i} of {len(seqs)} failed: {seq.error}")
        return seqs

    def stream(self, prompt_ids: list[int], pixel_values: torch.Tensor | None = None,
               params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text as it becomes final; the chunks join to the full answer."""
        seq = self.submit(prompt_ids, pixel_values, params)
        try:
            while not seq.finished:
                self.step()
                delta = seq.take_delta()
                if delta:
                    yield delta
            delta = seq.take_delta()
            if delta:
                yield delta
            if seq.error is not None:
                raise GenerationError(seq.error)
        finally:
            if not seq.finished:
                self.cancel(seq)
