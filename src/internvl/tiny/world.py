"""The synthetic visual world the tiny InternVL learns: seeded scenes of colored shapes, with questions.

One integer seed makes one example: a scene (or two, for the comparison question), its rendering, one
question and its one-word answer, computed from the scene's object list. It is not a dataset file writer
(`dataset.py`) nor an evaluation task (`eval/shapes.py`); both draw from `make_example`.

The world (issue 5):
- images: white or light-gray background, width and height each in [160, 640] px, aspect ratio between
  1:3 and 3:1 (log-uniform, so every tiling grid occurs);
- 1-6 shapes from {circle, square, triangle} in {red, green, blue, yellow}; each shape fills an
  axis-aligned s x s box with s between 1/8 and 1/4 of the image's shorter side, and boxes keep a gap
  between them, so shapes never touch;
- seven question types, one per `seed % 7`, so any run of consecutive seeds is balanced to within one
  example per type.

Splits: the training example seeds are `seed, seed + 1, ...`, below `HELDOUT_OFFSET` (10**9); held-out
(evaluation) seeds are the same range shifted by `HELDOUT_OFFSET`, so the two never share a seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from ..errors import ConfigError
from ..processing.grounding import format_region, normalize_box
from ..processing.prompt import IMAGE_PLACEHOLDER, multi_image_prompt

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")
# Base RGB of each color; every shape's fill is jittered around it by up to COLOR_JITTER per channel.
PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (240, 200, 30)}
COLOR_JITTER = 12
QUESTION_TYPES = ("count_shape", "count_color", "count_all", "color_of_shape", "shape_of_color", "exists",
                  "compare")
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 160, 640, 3.0
MIN_OBJECTS, MAX_OBJECTS = 1, 6
HELDOUT_OFFSET = 10**9  # held-out seeds = training seeds + this


@dataclass(frozen=True)
class Shape:
    """One object: its kind, color name, exact fill color and its box (x0, y0, side), in pixels."""

    kind: str
    color: str
    rgb: tuple[int, int, int]
    x0: int
    y0: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), right/bottom exclusive."""
        return self.x0, self.y0, self.x0 + self.size, self.y0 + self.size


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]

    def count(self, kind: str | None = None, color: str | None = None) -> int:
        """Objects of this kind and/or color (all objects when both are None)."""
        return sum((kind is None or s.kind == kind) and (color is None or s.color == color) for s in self.shapes)

    def render(self) -> Image.Image:
        """The scene as an RGB image; shapes are drawn without anti-aliasing, so each is one flat color."""
        img = Image.new("RGB", (self.width, self.height), self.background)
        draw = ImageDraw.Draw(img)
        for s in self.shapes:
            x0, y0, x1, y1 = s.x0, s.y0, s.x0 + s.size - 1, s.y0 + s.size - 1  # PIL boxes are inclusive
            if s.kind == "circle":
                draw.ellipse((x0, y0, x1, y1), fill=s.rgb)
            elif s.kind == "square":
                draw.rectangle((x0, y0, x1, y1), fill=s.rgb)
            else:  # an upright triangle: base along the bottom of the box, apex at the top middle
                draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=s.rgb)
        return img


@dataclass(frozen=True)
class Example:
    """One question about one scene (two for `compare`), with its answer."""

    seed: int
    qtype: str
    question: str  # the question text alone, without image placeholders
    answer: str
    scenes: tuple[Scene, ...]

    @property
    def prompt(self) -> str:
        """The human turn: `<image>\\n` + question, or `Image-1: <image>\\nImage-2: <image>\\n` + question."""
        if len(self.scenes) == 1:
            return IMAGE_PLACEHOLDER + "\n" + self.question
        return multi_image_prompt(len(self.scenes)) + self.question

    def images(self) -> list[Image.Image]:
        return [scene.render() for scene in self.scenes]


# ---------------------------------------------------------------------------------------------- scenes
def _image_size(rng: random.Random) -> tuple[int, int]:
    ratio = math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT)))  # width / height
    width = rng.randint(max(MIN_SIDE, math.ceil(MIN_SIDE * ratio)), min(MAX_SIDE, math.floor(MAX_SIDE * ratio)))
    # rounding may push the ratio past 3:1; clamp the height so both sides and the ratio stay in bounds
    lo, hi = max(MIN_SIDE, math.ceil(width / MAX_ASPECT)), min(MAX_SIDE, math.floor(width * MAX_ASPECT))
    return width, min(max(round(width / ratio), lo), hi)


def _gap(width: int, height: int) -> int:
    """Empty pixels kept between any two boxes (and, at least, the image edge)."""
    return max(2, min(width, height) // 40)


def _place(rng: random.Random, width: int, height: int, placed: list[Shape], size: int) -> tuple[int, int] | None:
    gap = _gap(width, height)
    for _ in range(60):
        x0 = rng.randint(gap, width - size - gap)
        y0 = rng.randint(gap, height - size - gap)
        if all(x0 + size + gap <= s.x0 or s.x0 + s.size + gap <= x0 or
               y0 + size + gap <= s.y0 or s.y0 + s.size + gap <= y0 for s in placed):
            return x0, y0
    return None


def random_scene(rng: random.Random, num_objects: int | None = None) -> Scene:
    """A random scene: size, background, then shapes placed one by one without overlap.

    A shape that finds no free spot is retried smaller, down to the 1/8 minimum; a scene that still
    cannot fit its objects is drawn again (rare: six boxes of at most 1/4 of the short side).
    """
    while True:
        width, height = _image_size(rng)
        background = (255, 255, 255) if rng.random() < 0.5 else (rng.randint(225, 245),) * 3
        n = num_objects if num_objects is not None else rng.randint(MIN_OBJECTS, MAX_OBJECTS)
        short = min(width, height)
        smallest, largest = math.ceil(short / 8), short // 4
        shapes: list[Shape] = []
        for _ in range(n):
            kind, color = rng.choice(SHAPES), rng.choice(COLORS)
            rgb = tuple(min(255, max(0, c + rng.randint(-COLOR_JITTER, COLOR_JITTER))) for c in PALETTE[color])
            size = rng.randint(smallest, largest)
            while (spot := _place(rng, width, height, shapes, size)) is None and size > smallest:
                size = max(smallest, int(size * 0.8))
            if spot is None:
                break
            shapes.append(Shape(kind, color, rgb, spot[0], spot[1], size))
        if len(shapes) == n:
            return Scene(width, height, background, tuple(shapes))


# -------------------------------------------------------------------------------------------- questions
def _scene_with_single(rng: random.Random, attr: str, values: tuple[str, ...]) -> tuple[Scene, Shape]:
    """A scene in which some `attr` value ("kind" or "color") belongs to exactly one object, and that object
    (for a value drawn uniformly among those that qualify)."""
    while True:
        scene = random_scene(rng)
        single = [v for v in values if sum(getattr(s, attr) == v for s in scene.shapes) == 1]
        if single:
            value = rng.choice(single)
            return scene, next(s for s in scene.shapes if getattr(s, attr) == value)


def _make(rng: random.Random, qtype: str) -> tuple[str, str, tuple[Scene, ...]]:
    """(question, answer, scenes) for one question type."""
    if qtype == "count_shape":
        scene, kind = random_scene(rng), rng.choice(SHAPES)
        return f"How many {kind}s are there?", str(scene.count(kind=kind)), (scene,)
    if qtype == "count_color":
        scene, color = random_scene(rng), rng.choice(COLORS)
        return f"How many {color} objects are there?", str(scene.count(color=color)), (scene,)
    if qtype == "count_all":
        scene = random_scene(rng)
        return "How many objects are there?", str(scene.count()), (scene,)
    if qtype == "color_of_shape":  # asked only when exactly one object has that shape
        scene, only = _scene_with_single(rng, "kind", SHAPES)
        return f"What color is the {only.kind}?", only.color, (scene,)
    if qtype == "shape_of_color":  # asked only when exactly one object has that color
        scene, only = _scene_with_single(rng, "color", COLORS)
        return f"What shape is the {only.color} object?", only.kind, (scene,)
    if qtype == "exists":  # yes and no equally likely
        scene = random_scene(rng)
        present = sorted({(s.color, s.kind) for s in scene.shapes})
        if rng.random() < 0.5:
            color, kind = rng.choice(present)
        else:
            color, kind = rng.choice([(c, k) for c in COLORS for k in SHAPES if (c, k) not in present])
        return f"Is there a {color} {kind}?", "yes" if (color, kind) in present else "no", (scene,)
    if qtype == "compare":  # asked only when the two counts differ
        kind = rng.choice(SHAPES)
        while True:
            first, second = random_scene(rng), random_scene(rng)
            a, b = first.count(kind=kind), second.count(kind=kind)
            if a != b:
                return f"Which image has more {kind}s? Answer 1 or 2.", "1" if a > b else "2", (first, second)
    raise ConfigError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")


def make_example(seed: int) -> Example:
    """The example of this seed: its question type is `QUESTION_TYPES[seed % 7]`, the rest is drawn from
    `random.Random(seed)` (stable across Python versions and platforms for integer seeds)."""
    if seed < 0:
        raise ConfigError(f"example seeds are non-negative, got {seed}")
    qtype = QUESTION_TYPES[seed % len(QUESTION_TYPES)]
    question, answer, scenes = _make(random.Random(seed), qtype)
    return Example(seed, qtype, question, answer, scenes)


def split_seeds(split: str, n: int, seed: int = 0) -> range:
    """The example seeds of a split: `seed .. seed + n - 1`, shifted by HELDOUT_OFFSET for "heldout".

    Raises:
        ConfigError: Unknown split, or a range that would reach into the other split's seeds.
    """
    if split not in ("train", "heldout"):
        raise ConfigError(f"split must be 'train' or 'heldout', got {split!r}")
    if n < 0 or seed < 0 or seed + n > HELDOUT_OFFSET:
        raise ConfigError(f"seed {seed} and n {n} must satisfy 0 <= seed, 0 <= n, seed + n <= {HELDOUT_OFFSET} "
                          "(training and held-out seeds must stay disjoint)")
    base = seed + (HELDOUT_OFFSET if split == "heldout" else 0)
    return range(base, base + n)


def examples(split: str, n: int, seed: int = 0) -> list[Example]:
    """n examples of a split (scenes only; images render on demand with `Example.images()`)."""
    return [make_example(s) for s in split_seeds(split, n, seed)]


# ------------------------------------------------------------------------------------ descriptions
# A training-only task (the counterpart of the captioning data in InternVL's first stage): every object named,
# left to right. Each word of the answer needs the pixels, so it gives the vision tower far more signal per
# image than a one-word answer; the seven question types above are what evaluation asks.
DESCRIBE_QUESTION = "Describe the image."


def describe(scene: Scene) -> str:
    """'3 objects: red circle, blue square, green triangle' (objects ordered by the x of their centers)."""
    shapes = sorted(scene.shapes, key=lambda s: (2 * s.x0 + s.size, 2 * s.y0 + s.size))
    noun = "object" if len(shapes) == 1 else "objects"
    return f"{len(shapes)} {noun}: " + ", ".join(f"{s.color} {s.kind}" for s in shapes)


# The grounding task (stage 0's data, `train/region_align.py`): every object as InternVL grounding markup,
# `<ref>red circle</ref><box>[[x1, y1, x2, y2]]</box>`, boxes in 0-1000 of the image, one line per phrase.
GROUND_QUESTION = "Locate every object."


def ground(scene: Scene) -> str:
    """Each distinct color-shape phrase with the boxes of its objects, left to right."""
    boxes: dict[str, list[tuple[int, int, int, int]]] = {}
    for s in sorted(scene.shapes, key=lambda s: (2 * s.x0 + s.size, 2 * s.y0 + s.size)):
        boxes.setdefault(f"{s.color} {s.kind}", []).append(normalize_box(s.box, scene.width, scene.height))
    return "\n".join(format_region(phrase, b) for phrase, b in boxes.items())


def question_texts() -> list[str]:
    """Every question the world can ask, in full wording (for the tokenizer's training corpus)."""
    texts = ["How many objects are there?"]
    texts += [f"How many {k}s are there?" for k in SHAPES]
    texts += [f"How many {c} objects are there?" for c in COLORS]
    texts += [f"What color is the {k}?" for k in SHAPES]
    texts += [f"What shape is the {c} object?" for c in COLORS]
    texts += [f"Is there a {c} {k}?" for c in COLORS for k in SHAPES]
    texts += [multi_image_prompt(2) + f"Which image has more {k}s? Answer 1 or 2." for k in SHAPES]
    return texts + [DESCRIBE_QUESTION]


def answer_texts() -> list[str]:
    """Every answer the world can give."""
    return [str(i) for i in range(MAX_OBJECTS + 1)] + list(COLORS) + list(SHAPES) + ["yes", "no"]


def description_texts() -> list[str]:
    """A description of every object count, naming every color and shape (for the tokenizer's corpus)."""
    pairs = [(c, k) for c in COLORS for k in SHAPES]
    return [describe(Scene(MIN_SIDE, MIN_SIDE, (255, 255, 255), tuple(
        Shape(k, c, PALETTE[c], 10 * i, 0, 5) for i, (c, k) in enumerate(pairs[n:n + count]))))
        for n, count in enumerate(range(1, MAX_OBJECTS + 1))]
