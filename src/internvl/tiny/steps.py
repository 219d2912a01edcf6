"""Step-wise answers in the tiny world: what a process reward model needs to judge, step by step.

A question followed by `STEP_INSTRUCTION` is answered in `\\n\\n`-separated steps (the separator VisualPRM
splits on): first every object of the image (the world's description, which the tiny model already learns),
then the objects the question is about, then `Answer: X`. For example

    <image>\\nHow many circles are there?\\nAnswer step by step.

    4 objects: red circle, blue square, green circle, yellow triangle

    circles: red circle, green circle

    Answer: 2

"How many objects" has no middle step (the count is in the first); the two-image comparison describes each
image in its own step and counts the shape in both before answering. Every step follows from the scene, so a
step is right or wrong, and a wrong step usually makes every continuation wrong: what Monte Carlo step labels
(`tts` / `prm_data.py`) pick up. Without the instruction the world's questions keep their one-word answers.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .dataset import MAX_DYNAMIC_PATCH, describe_record, to_record
from .world import Example, Scene, describe, examples

STEP_INSTRUCTION = "Answer step by step."
SEPARATOR = "\n\n"


def step_question(example: Example) -> str:
    """The user turn that asks for a step-wise answer."""
    return f"{example.prompt}\n{STEP_INSTRUCTION}"


def _listing(label: str, scene: Scene, keep) -> str:
    shapes = sorted(scene.shapes, key=lambda s: (2 * s.x0 + s.size, 2 * s.y0 + s.size))  # describe()'s order
    kept = [f"{s.color} {s.kind}" for s in shapes if keep(s)]
    return f"{label}: {', '.join(kept) if kept else 'none'}"


def _question_words(example: Example) -> list[str]:
    return example.question.rstrip("?.").split()


def solution_steps(example: Example) -> list[str]:
    """The reference steps of an example (the last is `Answer: <answer>`)."""
    scene, words, q = example.scenes[0], _question_words(example), example.qtype
    if q == "count_all":
        return [describe(scene), f"Answer: {example.answer}"]
    if q == "compare":  # "Which image has more circles? Answer 1 or 2."
        kind = words[4].rstrip("?")[:-1]
        a, b = (s.count(kind=kind) for s in example.scenes)
        return [f"Image 1: {describe(example.scenes[0])}", f"Image 2: {describe(example.scenes[1])}",
                f"{kind}s: {a} in image 1, {b} in image 2", f"Answer: {example.answer}"]
    if q == "count_shape":  # "How many circles are there"
        kind = words[2][:-1]
        middle = _listing(f"{kind}s", scene, lambda s: s.kind == kind)
    elif q == "count_color":  # "How many red objects are there"
        color = words[2]
        middle = _listing(f"{color} objects", scene, lambda s: s.color == color)
    elif q == "color_of_shape":  # "What color is the circle"
        kind = words[-1]
        middle = _listing(kind, scene, lambda s: s.kind == kind)
    elif q == "shape_of_color":  # "What shape is the red object"
        color = words[-2]
        middle = _listing(f"{color} object", scene, lambda s: s.color == color)
    else:  # exists: "Is there a red circle"
        color, kind = words[-2], words[-1]
        middle = _listing(f"{color} {kind}s", scene, lambda s: s.color == color and s.kind == kind)
    return [describe(scene), middle, f"Answer: {example.answer}"]


def step_answer(example: Example) -> str:
    return SEPARATOR.join(solution_steps(example))


def step_record(example: Example, split: str, image_names: list[str]) -> dict:
    """The official JSONL record of an example asked for a step-wise answer."""
    return {"id": f"{split}-{example.seed:09d}-{example.qtype}-steps",
            "image": image_names[0] if len(image_names) == 1 else image_names,
            "conversations": [{"from": "human", "value": step_question(example)},
                              {"from": "gpt", "value": step_answer(example)}]}


def export(out: str | os.PathLike, n: int, seed: int = 0, split: str = "train", name: str = "shapes_steps") -> Path:
    """Training data that teaches step-wise answers without forgetting the rest: every example of the
    range once with steps, once with its one-word answer and once described (three datasets, one set of
    images). Returns the meta JSON's path."""
    out = Path(out).resolve()
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"{name}_{kind}.jsonl" for kind in ("steps", "words", "describe")}
    handles = {kind: open(path, "w", encoding="utf-8") for kind, path in files.items()}
    try:
        for example in examples(split, n, seed):
            stem = f"{split}-{example.seed:09d}"
            rendered = example.images()
            names = [f"{stem}.png"] if len(rendered) == 1 else [f"{stem}-{i + 1}.png" for i in range(len(rendered))]
            for img, file_name in zip(rendered, names):
                img.save(images / file_name, compress_level=1)
            handles["steps"].write(json.dumps(step_record(example, split, names)) + "\n")
            handles["words"].write(json.dumps(to_record(example, split, names)) + "\n")
            handles["describe"].write(json.dumps(describe_record(example, split, names[0])) + "\n")
    finally:
        for f in handles.values():
            f.close()
    meta = {f"{name}_{kind}": {"root": str(images), "annotation": str(path), "data_augment": False,
                               "max_dynamic_patch": MAX_DYNAMIC_PATCH, "repeat_time": 1, "length": n}
            for kind, path in files.items()}
    meta_path = out / f"{name}_meta.json"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export the tiny world's step-wise training data (with the "
                                                 "one-word answers and descriptions of the same images).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, required=True, help="number of examples")
    parser.add_argument("--seed", type=int, default=0, help="first example seed")
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    args = parser.parse_args(argv)
    meta = export(args.out, args.n, args.seed, args.split)
    print(f"wrote {args.n} examples x (steps, one word, description) to {args.out}; meta {meta}")


if __name__ == "__main__":
    main()
