"""The synthetic world: determinism, geometry rules, exact question wording, and answers that hold on the
rendered pixels (recounted from connected color blobs, independently of the generator's object list)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from internvl.errors import ConfigError
from internvl.tiny import world
from internvl.tiny.world import COLORS, PALETTE, QUESTION_TYPES, SHAPES, make_example, split_seeds

SHAPE = "(circle|square|triangle)"
COLOR = "(red|green|blue|yellow)"
WORDING = {  # the exact wording; the answer pattern beside it
    "count_shape": (rf"<image>\nHow many {SHAPE}s are there\?", r"[0-6]"),
    "count_color": (rf"<image>\nHow many {COLOR} objects are there\?", r"[0-6]"),
    "count_all": (r"<image>\nHow many objects are there\?", r"[1-6]"),
    "color_of_shape": (rf"<image>\nWhat color is the {SHAPE}\?", COLOR),
    "shape_of_color": (rf"<image>\nWhat shape is the {COLOR} object\?", SHAPE),
    "exists": (rf"<image>\nIs there a {COLOR} {SHAPE}\?", "(yes|no)"),
    "compare": (rf"Image-1: <image>\nImage-2: <image>\nWhich image has more {SHAPE}s\? Answer 1 or 2\.", "[12]"),
}


def test_same_seed_same_example_and_pixels():
    for seed in (0, 6, 12345, 10**9 + 3):
        a, b = make_example(seed), make_example(seed)
        assert a == b
        assert [im.tobytes() for im in a.images()] == [im.tobytes() for im in b.images()]
    assert make_example(1) != make_example(8)  # same question type, different scene


def test_golden_examples_do_not_drift():
    """Training and held-out data must stay reproducible across versions: pin the first examples."""
    got = [(e.question, e.answer, [(s.width, s.height, len(s.shapes)) for s in e.scenes])
           for e in map(make_example, range(3))]
    assert got == GOLDEN


GOLDEN = [
    ("How many triangles are there?", "3", [(557, 261, 5)]),
    ("How many red objects are there?", "1", [(268, 598, 3)]),
    ("How many objects are there?", "3", [(450, 165, 3)]),
]


def test_question_types_are_balanced_and_worded_exactly():
    examples = [make_example(s) for s in range(700)]
    assert Counter(e.qtype for e in examples) == {t: 100 for t in QUESTION_TYPES}
    for e in examples:
        question, answer = WORDING[e.qtype]
        assert re.fullmatch(question, e.prompt), e.prompt
        assert re.fullmatch(answer, e.answer), (e.qtype, e.answer)
        assert len(e.scenes) == (2 if e.qtype == "compare" else 1)
    # every answer value occurs where it can (no type is degenerate)
    assert {e.answer for e in examples if e.qtype == "exists"} == {"yes", "no"}
    assert {e.answer for e in examples if e.qtype == "color_of_shape"} == set(COLORS)
    assert {e.answer for e in examples if e.qtype == "shape_of_color"} == set(SHAPES)
    assert {e.answer for e in examples if e.qtype == "count_all"} == {"1", "2", "3", "4", "5", "6"}


def test_scene_geometry_rules():
    ratios = []
    for seed in range(600):
        for scene in make_example(seed).scenes:
            w, h = scene.width, scene.height
            assert 160 <= w <= 640 and 160 <= h <= 640
            assert 1 / 3 <= w / h <= 3
            ratios.append(w / h)
            assert scene.background == (255, 255, 255) or (len(set(scene.background)) == 1
                                                            and 225 <= scene.background[0] <= 245)
            assert 1 <= len(scene.shapes) <= 6
            for s in scene.shapes:
                assert s.size * 8 >= min(w, h), "shape smaller than 1/8 of the shorter side"
                x0, y0, x1, y1 = s.box
                assert 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h
            for i, a in enumerate(scene.shapes):
                for b in scene.shapes[i + 1:]:
                    ax0, ay0, ax1, ay1 = a.box
                    bx0, by0, bx1, by1 = b.box
                    assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0, "boxes overlap or touch"
    # the aspect ratios span the range, so every tiling grid gets exercised
    assert min(ratios) < 0.4 and max(ratios) > 2.5


def components(mask: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """4-connected components of a boolean (H, W) mask, each as its horizontal runs (row, start, end).

    Runs of consecutive rows that share a column are joined with union-find.
    """
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    ys, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # same row-major order as the starts
    runs = list(zip(ys.tolist(), starts.tolist(), ends.tolist()))
    parent = list(range(len(runs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_row: dict[int, list[int]] = {}
    for i, (y, _, _) in enumerate(runs):
        by_row.setdefault(y, []).append(i)
    for i, (y, s0, e0) in enumerate(runs):
        for j in by_row.get(y - 1, []):
            if runs[j][1] < e0 and s0 < runs[j][2]:  # the two runs share a column
                parent[root(i)] = root(j)
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(root(i), []).append(run)
    return list(groups.values())


def blobs(image: Image.Image) -> list[tuple[str, str]]:
    """(color, shape) of each connected non-background region, read from the pixels alone.

    Color: the palette entry nearest the region's mean color. Shape: the region's fill of its bounding
    box (square ~1, circle ~pi/4, triangle ~1/2).
    """
    rgb = np.asarray(image).astype(int)
    background = rgb[0, 0]  # shapes keep a gap from the edges
    found = []
    for runs in components(np.abs(rgb - background).max(-1) > 30):
        rows = [y for y, _, _ in runs]
        height = max(rows) - min(rows) + 1
        width = max(e for _, _, e in runs) - min(s for _, s, _ in runs)
        area = sum(e - s for _, s, e in runs)
        mean = np.concatenate([rgb[y, s:e] for y, s, e in runs]).mean(0)
        color = min(PALETTE, key=lambda c: np.square(mean - np.array(PALETTE[c])).sum())
        fill = area / (width * height)
        kind = "square" if fill > 0.92 else "circle" if fill > 0.66 else "triangle"
        assert height * 8 >= min(image.size) - 8  # still at least ~1/8 of the shorter side on screen
        found.append((color, kind))
    return found


def answer_from_pixels(prompt: str, images: list[Image.Image]) -> str:
    """Answer the question from the rendered images only."""
    seen = [blobs(im) for im in images]
    objs = seen[0]
    if "How many objects are there?" in prompt:
        return str(len(objs))
    if m := re.search(r"How many (\w+) objects are there\?", prompt):
        return str(sum(c == m.group(1) for c, _ in objs))
    if m := re.search(r"How many (\w+)s are there\?", prompt):
        return str(sum(k == m.group(1) for _, k in objs))
    if m := re.search(r"What color is the (\w+)\?", prompt):
        (color,) = [c for c, k in objs if k == m.group(1)]
        return color
    if m := re.search(r"What shape is the (\w+) object\?", prompt):
        (kind,) = [k for c, k in objs if c == m.group(1)]
        return kind
    if m := re.search(r"Is there a (\w+) (\w+)\?", prompt):
        return "yes" if (m.group(1), m.group(2)) in objs else "no"
    m = re.search(r"Which image has more (\w+)s\?", prompt)
    counts = [sum(k == m.group(1) for _, k in objs) for objs in seen]
    assert counts[0] != counts[1]
    return "1" if counts[0] > counts[1] else "2"


@pytest.mark.parametrize("first", [0, 10**9])  # a training and a held-out range
def test_answers_hold_on_the_rendered_pixels(first):
    for seed in range(first, first + 84):  # 12 of each question type
        example = make_example(seed)
        images = example.images()
        assert [im.size for im in images] == [(s.width, s.height) for s in example.scenes]
        assert [len(blobs(im)) for im in images] == [len(s.shapes) for s in example.scenes]
        assert answer_from_pixels(example.prompt, images) == example.answer, (seed, example.prompt)


def test_splits_use_disjoint_seeds():
    train, heldout = split_seeds("train", 1000, 5), split_seeds("heldout", 1000, 5)
    assert list(train) == list(range(5, 1005))
    assert set(train).isdisjoint(heldout) and heldout[0] == world.HELDOUT_OFFSET + 5
    assert [e.seed for e in world.examples("heldout", 3, 7)] == [10**9 + 7, 10**9 + 8, 10**9 + 9]
    with pytest.raises(ConfigError, match="disjoint"):
        split_seeds("train", 10, world.HELDOUT_OFFSET - 5)
    with pytest.raises(ConfigError, match="split"):
        split_seeds("test", 10)
    with pytest.raises(ConfigError, match="non-negative"):
        make_example(-1)


def test_question_and_answer_vocabulary_lists_are_complete():
    """The tokenizer corpus lists cover every question and answer the generator produces."""
    questions, answers = set(world.question_texts()), set(world.answer_texts())
    for seed in range(350):
        e = make_example(seed)
        assert e.prompt.replace("<image>\n", "", 1) in questions or e.prompt in questions
        assert e.answer in answers
