"""A small synthetic SFT set for the training-loop tests: coloured-shape images with short Q&A, plus text-only
records, written in the official meta JSON + JSONL format."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("circle", "square")


def _image(path: Path, colour: str, shape: str, size: tuple[int, int]) -> None:
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    w, h = size
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLOURS[colour])
    img.save(path)


def make_dataset(root: Path, n: int = 16, text_every: int = 3, seed: int = 0, name: str = "shapes",
                 wide_every: int = 0) -> Path:
    """Write `n` records (every `text_every`-th one text-only) and a meta file; returns the meta path.

    With `wide_every`, every such image is 2:1 and tiles into more than one tile when max_dynamic_patch > 1.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        if text_every and i % text_every == text_every - 1:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            lines.append({"conversations": [{"from": "human", "value": f"What is {a} plus {b}?"},
                                            {"from": "gpt", "value": f"{a + b}."}]})
            continue
        size = (224, 112) if wide_every and i % wide_every == 0 else (112, 112)
        _image(root / f"img{i}.png", colour, shape, size)
        lines.append({"image": f"img{i}.png", "conversations": [
            {"from": "human", "value": "What colour is the shape?"},
            {"from": "gpt", "value": f"It is a {colour} {shape}."}]})
    ann = root / f"{name}.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in lines))
    meta = root / f"{name}_meta.json"
    meta.write_text(json.dumps({name: {"root": str(root), "annotation": str(ann), "data_augment": False,
                                       "repeat_time": 1, "length": n}}))
    return meta


def make_pairs(root: Path, n: int = 8, text_every: int = 3, seed: int = 0, name: str = "pairs",
               equal_chosen_lengths: bool = False) -> Path:
    """Write `n` MMPR lines (question, chosen, rejected; every `text_every`-th one text-only, every 4th image
    question already holding its `<image>`) and a meta file; returns the meta path.

    With `equal_chosen_lengths` every chosen response is 10 characters (10 byte-level tokens), so the token mean
    over several micro-batches equals the mean of their token means."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        wrong = rng.choice([c for c in sorted(COLOURS) if c != colour])
        if text_every and i % text_every == text_every - 1:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            chosen = f"Sum is {a + b:02d}." if equal_chosen_lengths else f"{a} plus {b} is {a + b}."
            lines.append({"question": f"What is {a} plus {b}?", "chosen": chosen, "rejected": f"{a + b + 1}"})
            continue
        _image(root / f"img{i}.png", colour, shape, (112, 112))
        chosen = f"A {colour[:3]} {shape[:3]}." if equal_chosen_lengths else f"It is a {colour} {shape}."
        question = "<image>\nWhat colour is the shape?" if i % 4 == 0 else "What colour is the shape?"
        lines.append({"image": f"img{i}.png", "question": question, "chosen": chosen,
                      "rejected": f"It is a {wrong} {shape}, I think."})
    ann = root / f"{name}.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in lines))
    meta = root / f"{name}_meta.json"
    meta.write_text(json.dumps({name: {"root": str(root), "annotation": str(ann), "repeat_time": 1, "length": n}}))
    return meta
