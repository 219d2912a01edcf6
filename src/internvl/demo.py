"""`make demo`: the shipped tiny InternVL answers questions about its example images.

Loads the checkpoint in `internvl/tiny/model/` through `from_pretrained` (as `internvl chat` does), tiles each
example image of `internvl/tiny/examples/`, asks every question of `examples.json` in one batch through the
engine, and prints each answer beside the expected one, with timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import CheckpointError
from .tiny import EXAMPLES_DIR, MODEL_DIR


def answer_examples(model, tokenizer, examples, directory: Path = EXAMPLES_DIR) -> list[str]:
    """Greedy answers to the example questions, batched through `batch_chat` (one engine)."""
    from .processing.image import load_question_images
    tiles = [load_question_images([directory / n for n in q.images], model.config) for q in examples]
    pixel_values = torch.cat([t for per_question in tiles for t in per_question])
    num_patches = [[t.shape[0] for t in per_question] for per_question in tiles]
    questions = [q.prompt for q in examples]
    return model.batch_chat(tokenizer, pixel_values, questions, {"max_new_tokens": 8},
                            num_patches_list=num_patches)


def run_demo(say: Callable[[str], None] = print, model_dir: Path = MODEL_DIR) -> float:
    """Run the demo; returns the share of example questions answered correctly."""
    from .chat import from_pretrained
    from .eval.metrics import first_word_match
    from .tiny.examples import load_examples

    if not (model_dir / "config.json").exists():
        raise CheckpointError(f"the shipped tiny model is missing from {model_dir}; `make tiny` trains it")
    t0 = time.perf_counter()
    model, tokenizer = from_pretrained(model_dir)
    n = sum(p.numel() for p in model.parameters())
    t1 = time.perf_counter()
    say(f"loaded the tiny InternVL ({n / 1e6:.2f}M parameters, {next(model.parameters()).dtype}) "
        f"from {model_dir} in {t1 - t0:.2f}s")
    examples = load_examples()
    answers = answer_examples(model, tokenizer, examples)
    t2 = time.perf_counter()
    right = 0
    for q, a in zip(examples, answers):
        ok = first_word_match(a, q.answer) == 1.0
        right += ok
        say(f"  [{' + '.join(q.images)}] {q.question:<48} -> {a!s:<9} {'ok' if ok else 'expected ' + q.answer}")
    say(f"{right}/{len(examples)} right, {len(examples)} questions about {len({i for q in examples for i in q.images})} "
        f"images answered in {t2 - t1:.2f}s (one batch through the engine)")
    say(f"try: internvl chat --image {EXAMPLES_DIR / 'shapes-1.png'} \"How many objects are there?\"")
    return right / len(examples)
