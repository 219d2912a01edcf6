"""`make demo` until the trained tiny model ships: the full pipeline on a tiny random-weight InternVL.

Builds the `tiny-random` preset with random weights and a byte-level tokenizer, saves it in the official
checkpoint layout, loads it back through `from_pretrained`, tiles a generated image and runs `chat()`.
The answer is noise (the weights are random); what the demo shows is that every stage runs and how long
each takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .checkpoint.loader import save_checkpoint
from .models.internvl import InternVL
from .presets import PRESETS
from .processing.tokenizer import byte_tokenizer


def example_image(width: int = 448, height: int = 224) -> Image.Image:
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 20, 120, 120), fill="red")
    draw.rectangle((180, 40, 260, 120), fill="blue")
    draw.polygon([(330, 180), (380, 80), (430, 180)], fill="green")
    return img


def run_demo(workdir: Path, say: Callable[[str], None]) -> str:
    from .chat import from_pretrained
    from .processing.image import load_image

    t0 = time.perf_counter()
    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    cfg = PRESETS["tiny-random"].config.replace(image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    model = InternVL(cfg)
    model.init_weights()
    ckpt = save_checkpoint(model, workdir / "tiny-random", "official")
    tokenizer.save_pretrained(ckpt)
    say(f"saved a random tiny-random InternVL ({sum(p.numel() for p in model.parameters()):,} parameters) "
        f"to {ckpt} in the official layout")
    model, tokenizer = from_pretrained(ckpt)
    image_path = workdir / "shapes.png"
    example_image().save(image_path)
    pixel_values = load_image(image_path, input_size=cfg.image_size, max_num=cfg.max_dynamic_patch)
    say(f"tiled a 448x224 image into {pixel_values.shape[0]} tiles of {cfg.image_size}px "
        f"({pixel_values.shape[0] * cfg.num_image_token} image tokens)")
    question = "How many objects are there?"
    answer = model.chat(tokenizer, pixel_values, question, {"max_new_tokens": 24, "do_sample": True, "seed": 0})
    say(f"Q: {question}\nA: {answer!r}   (random weights: the answer is noise)")
    say(f"done in {time.perf_counter() - t0:.1f}s")
    return answer
