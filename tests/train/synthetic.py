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
