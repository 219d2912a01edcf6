"""Benchmark rows -> model requests -> answers, through one engine with continuous batching.

`build_request` turns a row into what the model sees: the official prompt (`prompts.py`), the images tiled
with the dataset's budget, the templated prompt ids. `engine_generate` is the default way to answer a
stream of requests: it keeps up to `batch_size` requests in the engine, submits the next one as soon as
a slot frees (images are decoded only then), and yields each answer when it finishes, in finishing order.

Anything with the `Generate` signature can replace it (`harness.run(..., generate=...)`): a Best-of-N
sampler with a reward model gets the same requests (question with its `<image>` placeholders, pixel
values, tiles per image, prompt ids) and returns one answer per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..engine.sampling import SamplingParams
from ..errors import InternVLError
from ..models.internvl import InternVL
from ..processing.image import load_image
from ..processing.prompt import build_query
from ..processing.templates import get_template
from ..processing.tokenizer import Tokenizer
from . import choice, prompts
from .answer_engine import make_engine
from .tsv import Benchmark, Row


@dataclass
class Request:
    key: str  # the row's index
    question: str  # the user turn, with one <image> placeholder per image (what `model.chat` takes)
    prompt_ids: list[int] = field(default_factory=list)  # the whole templated prompt
    pixel_values: torch.Tensor | None = None  # (tiles, 3, S, S), every image's tiles in order
    num_patches_list: list[int] = field(default_factory=list)  # tiles per image
    max_new_tokens: int = 1024
    error: str | None = None  # the row could not be turned into a request (unreadable image, ...)


Answer = tuple[str, str, "str | None"]  # (key, answer text, error or None)
Generate = Callable[[Iterable[Request]], Iterator[Answer]]


def row_prompt(bench: Benchmark, row: Row, kind: str) -> str:
    """The text of the user turn for a row of a dataset of this kind (without image placeholders)."""
    question = row.get("question")
    if kind == "mcq":
        return prompts.multiple_choice_prompt(question, choice.options(row.fields), row.get("hint"))
    if kind == "yorn":
        return prompts.yes_no_prompt(question, bench.name)
    return prompts.open_prompt(question, bench.name)


def row_images(bench: Benchmark, row: Row, model: InternVL, max_dynamic_patch: int | None) -> list[torch.Tensor]:
    """Each image's tiles, with the dataset's tile budget shared as the official evaluation does."""
    cfg = model.config
    per_image = prompts.tiles_per_image(prompts.max_tiles(bench.name, max_dynamic_patch), len(row.images))
    if not cfg.dynamic_image_size:
        per_image = 1
    tiles = []
    for k, source in enumerate(row.images):
        image = source.load()
        if k == 0 and prompts.upscale_first_image(bench.name):
            image = image.resize((image.width * 2, image.height * 2), Image.BILINEAR)
        tiles.append(load_image(image, cfg.image_size, max_num=per_image, min_num=1, use_thumbnail=cfg.use_thumbnail))
    return tiles


def build_request(bench: Benchmark, row: Row, kind: str, model: InternVL, tokenizer: Tokenizer,
                  max_dynamic_patch: int | None = None, max_new_tokens: int = 1024) -> Request:
    """The request for one row; a row that cannot be built (an image that fails to decode) carries `error`."""
    question = prompts.with_images(row_prompt(bench, row, kind), len(row.images))
    try:
        tiles = row_images(bench, row, model, max_dynamic_patch)
        patches = [t.shape[0] for t in tiles]
        cfg = model.config
        query = build_query(get_template(cfg.template), question, None, patches, cfg.num_image_token,
                            cfg.system_message)
    except InternVLError as e:
        return Request(row.index, question, error=f"{bench.where(row)}: {e}")
    ids = tokenizer(query, return_tensors=None)["input_ids"]
    return Request(row.index, question, ids, torch.cat(tiles) if tiles else None, patches, max_new_tokens)


def engine_generate(model: InternVL, tokenizer: Tokenizer, batch_size: int = 16) -> Generate:
    """Greedy answers through one engine with continuous batching (the default `Generate`)."""
    def generate(requests: Iterable[Request]) -> Iterator[Answer]:
        engine = make_engine(model, tokenizer, batch_size)
        pending = iter(requests)
        active = []  # (key, sequence)
        exhausted = False
        while True:
            while not exhausted and len(engine.waiting) < batch_size:  # keep the free slots fed
                req = next(pending, None)
                if req is None:
                    exhausted = True
                    break
                room = engine.max_len - len(req.prompt_ids)
                if req.error is None and room < 1:
                    req.error = (f"index {req.key}: the prompt's {len(req.prompt_ids)} tokens fill the model's "
                                 f"context of {engine.max_len}")
                if req.error is not None:
                    yield req.key, "", req.error
                    continue
                params = SamplingParams(max_new_tokens=min(req.max_new_tokens, room))
                active.append((req.key, engine.submit(req.prompt_ids, req.pixel_values, params)))
            if not engine.has_work():
                return
            engine.step()
            for key, seq in [a for a in active if a[1].finished]:
                yield key, seq.text.strip(), None
            active = [a for a in active if not a[1].finished]

    return generate
