"""The example images shipped with the tiny model, and the questions about them that `make demo` and the
README ask.

Three scenes drawn by the world's `random_scene` from their own fixed seeds (not from an example stream of
either split, so training never saw them), each asked every question type that applies to it, plus the two-image comparison on the first two. The
answers are computed from the scenes' object lists, as everywhere in the world. `examples.json` beside the
PNGs records (images, question, answer); `write_examples` regenerates all of it byte for byte.

    python -m internvl.tiny.examples --out src/internvl/tiny/examples
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..processing.prompt import IMAGE_PLACEHOLDER, multi_image_prompt
from . import EXAMPLES_DIR
from .world import COLORS, HELDOUT_OFFSET, SHAPES, Scene, random_scene

SCENE_SEEDS = (3 * HELDOUT_OFFSET + 19, 3 * HELDOUT_OFFSET + 26, 3 * HELDOUT_OFFSET + 33)  # wide, square, tall
SCENE_OBJECTS = (4, 5, 3)  # enough objects per scene for every question type to have something to ask


@dataclass(frozen=True)
class Question:
    images: tuple[str, ...]  # file names under the examples directory
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        """The human turn, as the training data writes it."""
        head = IMAGE_PLACEHOLDER + "\n" if len(self.images) == 1 else multi_image_prompt(len(self.images))
        return head + self.question


def scenes() -> list[Scene]:
    return [random_scene(random.Random(seed), n) for seed, n in zip(SCENE_SEEDS, SCENE_OBJECTS)]


def questions_about(scene: Scene, name: str) -> list[Question]:
    """One question of each single-image type that applies to this scene (the first applicable pick of each)."""
    qs = [Question((name,), "How many objects are there?", str(scene.count()))]
    kind = max(SHAPES, key=lambda k: scene.count(kind=k))
    qs.append(Question((name,), f"How many {kind}s are there?", str(scene.count(kind=kind))))
    color = max(COLORS, key=lambda c: scene.count(color=c))
    qs.append(Question((name,), f"How many {color} objects are there?", str(scene.count(color=color))))
    single_kind = next((k for k in SHAPES if scene.count(kind=k) == 1), None)
    if single_kind is not None:
        only = next(s for s in scene.shapes if s.kind == single_kind)
        qs.append(Question((name,), f"What color is the {single_kind}?", only.color))
    single_color = next((c for c in COLORS if scene.count(color=c) == 1), None)
    if single_color is not None:
        only = next(s for s in scene.shapes if s.color == single_color)
        qs.append(Question((name,), f"What shape is the {single_color} object?", only.kind))
    first = scene.shapes[0]
    qs.append(Question((name,), f"Is there a {first.color} {first.kind}?", "yes"))
    absent = next((c, k) for c in COLORS for k in SHAPES if scene.count(kind=k, color=c) == 0)
    qs.append(Question((name,), f"Is there a {absent[0]} {absent[1]}?", "no"))
    return qs


def compare(a: Scene, b: Scene, names: tuple[str, str]) -> Question | None:
    kind = next((k for k in SHAPES if a.count(kind=k) != b.count(kind=k)), None)
    if kind is None:
        return None
    return Question(names, f"Which image has more {kind}s? Answer 1 or 2.",
                    "1" if a.count(kind=kind) > b.count(kind=kind) else "2")


def all_questions() -> list[Question]:
    drawn = scenes()
    names = [f"shapes-{i + 1}.png" for i in range(len(drawn))]
    qs = [q for scene, name in zip(drawn, names) for q in questions_about(scene, name)]
    pair = compare(drawn[0], drawn[1], (names[0], names[1]))
    return qs + ([pair] if pair is not None else [])


def write_examples(out: str | Path = EXAMPLES_DIR) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes()):
        scene.render().save(out / f"shapes-{i + 1}.png", optimize=True)
    path = out / "examples.json"
    rows = [{"images": list(q.images), "question": q.question, "answer": q.answer} for q in all_questions()]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def load_examples(directory: str | Path = EXAMPLES_DIR) -> list[Question]:
    rows = json.loads((Path(directory) / "examples.json").read_text())
    return [Question(tuple(r["images"]), r["question"], r["answer"]) for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the tiny model's example images and questions.")
    parser.add_argument("--out", default=str(EXAMPLES_DIR), help="output directory")
    args = parser.parse_args(argv)
    print(f"wrote {write_examples(args.out)}")


if __name__ == "__main__":
    main()
