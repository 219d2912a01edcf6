"""`internvl eval export-shapes`: the tiny model's world as VLMEvalKit benchmark files.

Three TSVs from held-out seeds (training never sees them; each set draws from its own seed range), so
`internvl eval run` has standard-format data on a machine without downloads:
- `ShapesMCQ_circular.tsv`: multiple choice (colors, shapes, counts, which image has more), every question
  with all its rotations (`choice.circularize`), rotations pointing at the original row's image by index;
  the name makes the scorer evaluate it circularly, as MMBench.
- `ShapesYN.tsv`: "Is there a red circle?", answers Yes / No, categories by shape and l2-categories by color.
- `ShapesVQA.tsv`: all seven question types, one-word answers (scored by exact match).
Images are base64 PNG; the two-image comparison rows hold a list of two.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ..tiny import world
from .choice import LETTERS, circularize
from .tsv import encode_image, write_tsv

L2_CATEGORY = {"count_shape": "counting", "count_color": "counting", "count_all": "counting",
               "color_of_shape": "attribute", "shape_of_color": "attribute", "exists": "existence",
               "compare": "comparison"}
SEED_RANGE = 10**7  # each set's seeds start this far from the previous set's
FILES = ("ShapesMCQ_circular.tsv", "ShapesYN.tsv", "ShapesVQA.tsv")


def _image_cell(example: world.Example) -> str:
    images = [encode_image(img) for img in example.images()]
    return images[0] if len(images) == 1 else repr(images)


def _examples(n: int, seed: int, keep) -> list[world.Example]:
    """The first n held-out examples (from `seed` on) that `keep` accepts."""
    out = []
    s = seed
    while len(out) < n:
        batch = [world.make_example(x) for x in world.split_seeds("heldout", 7 * n, s)]
        out += [e for e in batch if keep(e)]
        s += 7 * n
    return out[:n]


def _mcq_options(example: world.Example) -> tuple[str, list[str]]:
    """(question, option texts) of a question as multiple choice; the answer is among the options."""
    rng = random.Random(example.seed)
    if example.qtype == "color_of_shape":
        texts = list(world.COLORS)
    elif example.qtype == "shape_of_color":
        texts = list(world.SHAPES)
    elif example.qtype == "compare":
        return example.question.replace(" Answer 1 or 2.", ""), ["1", "2"]
    else:  # counts: the answer and three other counts the world can have, in increasing order
        others = [str(c) for c in range(world.MAX_OBJECTS + 1) if str(c) != example.answer]
        return example.question, sorted(rng.sample(others, 3) + [example.answer], key=int)
    rng.shuffle(texts)
    return example.question, texts


def mcq_rows(n: int, seed: int) -> list[dict]:
    rows = []
    for i, ex in enumerate(_examples(n, seed, lambda e: e.qtype != "exists")):
        question, texts = _mcq_options(ex)
        row = {"index": str(i), "image": _image_cell(ex), "question": question,
               "answer": LETTERS[texts.index(ex.answer)], "category": ex.qtype, "l2-category": L2_CATEGORY[ex.qtype],
               "split": "heldout"}
        row.update(zip(LETTERS, texts))
        rows.append(row)
    return circularize(rows)


def yes_no_rows(n: int, seed: int) -> list[dict]:
    rows = []
    for i, ex in enumerate(_examples(n, seed, lambda e: e.qtype == "exists")):
        color, kind = ex.question[len("Is there a "):-1].split()
        rows.append({"index": str(i), "image": _image_cell(ex), "question": ex.question,
                     "answer": ex.answer.capitalize(), "category": kind, "l2-category": color, "split": "heldout"})
    return rows


def vqa_rows(n: int, seed: int) -> list[dict]:
    return [{"index": str(i), "image": _image_cell(ex), "question": ex.question, "answer": ex.answer,
             "category": ex.qtype, "l2-category": L2_CATEGORY[ex.qtype], "split": "heldout"}
            for i, ex in enumerate(_examples(n, seed, lambda e: True))]


def export_shapes(out: str | os.PathLike, n: int = 200, seed: int = 0) -> list[Path]:
    """Write the three sets (n questions each; the MCQ file also holds the rotations) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["index", "image", "question"]
    tail = ["answer", "category", "l2-category", "split"]
    mcq = mcq_rows(n, seed)
    yn = yes_no_rows(n, seed + SEED_RANGE)
    vqa = vqa_rows(n, seed + 2 * SEED_RANGE)
    return [write_tsv(out / FILES[0], common + list("ABCD") + tail + ["g_index"], mcq),
            write_tsv(out / FILES[1], common + tail, yn),
            write_tsv(out / FILES[2], common + tail, vqa)]
