"""The engine offline generation runs on (evaluation, best-of-N, preference sampling): answers end where the
chat template's replies end or at the tokenizer's EOS, and decode without special tokens."""

from __future__ import annotations

from ..engine.engine import Engine
from ..processing.prompt import IMG_CONTEXT_TOKEN
from ..processing.templates import get_template, stop_strings


def stop_token_ids(model, tokenizer) -> list[int]:
    """The template's stop strings that are single tokens, plus the tokenizer's EOS."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for text in stop_strings(get_template(model.config.template)):
        try:
            ids.add(tokenizer.convert_tokens_to_ids(text))
        except KeyError:
            pass
    return sorted(i for i in ids if i is not None)


def make_engine(model, tokenizer, max_batch: int = 8, **options) -> Engine:
    """An `Engine` over `model` (given its image-token id from `tokenizer` if it has none); `options` go to
    `Engine` (e.g. `vir`)."""
    if model.img_context_token_id is None:
        model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    return Engine(model, decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                  eos_token_ids=stop_token_ids(model, tokenizer), max_batch=max_batch, **options)
