"""Export the synthetic world as an official InternVL fine-tuning dataset: PNG images, JSONL, meta JSON.

Spec section 5 (the "Chat Data Format"). Each example of `world.py` becomes one JSONL line

    {"id": "train-000000123-count_all", "image": "train-000000123.png",
     "conversations": [{"from": "human", "value": "<image>\\nHow many objects are there?"},
                       {"from": "gpt", "value": "3"}]}

(`"image": ["...-1.png", "...-2.png"]` for the two-image comparison), and the meta JSON names the dataset:

    {"shapes_train": {"root": ".../images", "annotation": ".../shapes_train.jsonl", "data_augment": false,
                      "max_dynamic_patch": 6, "repeat_time": 1, "length": N}}

Paths in the meta file are absolute, so it works from any working directory. The id carries the example
seed and question type (the official format has no field for them). Question types are balanced: example
seed s asks type `QUESTION_TYPES[s % 7]`, so N consecutive seeds hold N/7 of each (+-1). The training
split uses seeds `seed .. seed+N-1`; `--split heldout` shifts them by 10**9 (see `world.split_seeds`).

    python -m internvl.tiny.dataset --out DIR --n N --seed S [--split train|heldout] [--workers W]

Rendering and PNG encoding are nearly all of the time, so `--workers` processes share them (default: every
core this process may use); the files are the same whatever the number.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from ..errors import ConfigError
from ..hardware import available_cpus
from ..processing.prompt import IMAGE_PLACEHOLDER
from .world import (DESCRIBE_QUESTION, GROUND_QUESTION, QUESTION_TYPES, Example, examples, ground, make_example,
                    split_seeds)
from .world import describe as describe_scene

MAX_DYNAMIC_PATCH = 6  # the tiny preset's tiling limit, recorded per dataset as the official meta does


def to_record(example: Example, split: str, image_names: list[str]) -> dict:
    """The official JSONL record of one example whose images are saved under `image_names`."""
    return {
        "id": f"{split}-{example.seed:09d}-{example.qtype}",
        "image": image_names[0] if len(image_names) == 1 else image_names,
        "conversations": [{"from": "human", "value": example.prompt}, {"from": "gpt", "value": example.answer}],
    }


def image_names(example: Example, split: str) -> list[str]:
    """The file names of an example's images: `<split>-<seed>.png`, or `-1`/`-2` for a pair."""
    stem, n = f"{split}-{example.seed:09d}", len(example.scenes)
    return [f"{stem}.png"] if n == 1 else [f"{stem}-{i + 1}.png" for i in range(n)]


def _save_images(job: tuple[Example, str, str]) -> None:
    """Render one example and save its PNGs (a job is picklable, for a worker process)."""
    example, split, images = job
    for img, file_name in zip(example.images(), image_names(example, split)):
        img.save(os.path.join(images, file_name), compress_level=1)  # fast; these files are regenerated at will


def save_all_images(chosen: list[Example], split: str, images: Path, workers: int) -> None:
    """Every image of `chosen` into `images`, by `workers` processes (in this one when there are few)."""
    jobs = [(e, split, str(images)) for e in chosen]
    if workers <= 1 or len(jobs) < 2 * workers:
        for job in jobs:
            _save_images(job)
        return
    with ProcessPoolExecutor(min(workers, len(jobs))) as pool:  # a fork per worker, all started at once
        for _ in pool.map(_save_images, jobs, chunksize=64):
            pass


def export(out: str | os.PathLike, n: int, seed: int = 0, split: str = "train", name: str | None = None,
           describe: bool = False, ground: bool = False, types: tuple[str, ...] | None = None,
           workers: int = 1) -> Path:
    """Write n examples of a split as images + JSONL + meta JSON under `out`; returns the meta file's path.

    Args:
        out: Output directory (created): `images/`, `<name>.jsonl`, `<name>_meta.json`.
        n: Number of examples.
        seed: First example seed of the split.
        split: "train" or "heldout" (disjoint seeds).
        name: Dataset name in the meta file; default `shapes_<split>`.
        describe: Also write `<name>_describe`: the same images, each first image asked
            `world.DESCRIBE_QUESTION` (a second dataset in the meta file).
        ground: Also write the grounding records of the same first images (`world.ground`) with a meta file of
            their own, `<name>_ground_meta.json`: the data of the vision pre-training stage (`--stage 0`).
        types: Only these question types: the first n seeds from `seed` on whose type is one of them
            (`seed % 7` picks the type, so they share the n examples equally, +-1).
        workers: Processes rendering the images (the JSONL files are written here, in seed order).
    """
    chosen = _examples(split, n, seed, types)  # before any file is opened: bad types must not truncate old data
    name = name or f"shapes_{split}"
    out = Path(out).resolve()
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    annotation, described = out / f"{name}.jsonl", out / f"{name}_describe.jsonl"
    grounded = out / f"{name}_ground.jsonl"
    save_all_images(chosen, split, images, workers)
    with open(annotation, "w", encoding="utf-8") as f, ExitStack() as stack:
        g = stack.enter_context(open(described, "w", encoding="utf-8")) if describe else None
        h = stack.enter_context(open(grounded, "w", encoding="utf-8")) if ground else None
        for example in chosen:
            names = image_names(example, split)
            f.write(json.dumps(to_record(example, split, names)) + "\n")
            if g is not None:
                g.write(json.dumps(describe_record(example, split, names[0])) + "\n")
            if h is not None:
                h.write(json.dumps(ground_record(example, split, names[0])) + "\n")

    def entry(path: Path) -> dict:
        return {"root": str(images), "annotation": str(path), "data_augment": False,
                "max_dynamic_patch": MAX_DYNAMIC_PATCH, "repeat_time": 1, "length": n}

    meta = {name: entry(annotation)}
    if describe:
        meta[f"{name}_describe"] = entry(described)
    meta_path = out / f"{name}_meta.json"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if ground:
        (out / f"{name}_ground_meta.json").write_text(json.dumps({f"{name}_ground": entry(grounded)}, indent=2) + "\n")
    return meta_path


def _examples(split: str, n: int, seed: int, types: tuple[str, ...] | None) -> list[Example]:
    if types is None:
        return examples(split, n, seed)
    unknown = sorted(set(types) - set(QUESTION_TYPES))
    if unknown or not types:
        raise ConfigError(f"unknown question types {unknown}; known: {', '.join(QUESTION_TYPES)}")
    wanted = {QUESTION_TYPES.index(t) for t in types}
    span = -(-n * len(QUESTION_TYPES) // len(wanted)) + len(QUESTION_TYPES)  # enough seeds to hold n of them
    seeds = [s for s in split_seeds(split, span, seed) if s % len(QUESTION_TYPES) in wanted][:n]
    return [make_example(s) for s in seeds]


def describe_record(example: Example, split: str, image_name: str) -> dict:
    """The description record of an example's first image (see `world.describe`)."""
    return {"id": f"{split}-{example.seed:09d}-describe", "image": image_name,
            "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER + "\n" + DESCRIBE_QUESTION},
                              {"from": "gpt", "value": describe_scene(example.scenes[0])}]}


def ground_record(example: Example, split: str, image_name: str) -> dict:
    """The grounding record of an example's first image (see `world.ground`)."""
    return {"id": f"{split}-{example.seed:09d}-ground", "image": image_name,
            "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER + "\n" + GROUND_QUESTION},
                              {"from": "gpt", "value": ground(example.scenes[0])}]}


def type_counts(annotation: str | os.PathLike) -> Counter:
    """Question types in an exported JSONL file (read back from the ids)."""
    with open(annotation, encoding="utf-8") as f:
        return Counter(json.loads(line)["id"].split("-", 2)[2] for line in f if line.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export the tiny InternVL's synthetic shapes world as an "
                                                 "official meta JSON + JSONL + PNG dataset.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, required=True, help="number of examples")
    parser.add_argument("--seed", type=int, default=0, help="first example seed")
    parser.add_argument("--split", choices=["train", "heldout"], default="train",
                        help="train: seeds seed..seed+n-1; heldout: the same shifted by 10**9")
    parser.add_argument("--name", default=None, help="dataset name in the meta file (default shapes_<split>)")
    parser.add_argument("--describe", action="store_true",
                        help="also write a description of each image as a second dataset (training only)")
    parser.add_argument("--ground", action="store_true",
                        help="also write grounding records of the images, with their own meta file (stage 0 data)")
    parser.add_argument("--types", default=None,
                        help="comma-separated question types to keep (e.g. count_shape,compare); default all")
    parser.add_argument("--workers", type=int, default=available_cpus(),
                        help="processes rendering images (default: every core)")
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= available_cpus():  # rendering is CPU-bound: more processes than CPUs only cost
        parser.error(f"--workers must be between 1 and the {available_cpus()} CPUs this process may use, "
                     f"got {args.workers}")
    types = tuple(t.strip() for t in args.types.split(",")) if args.types else None
    try:
        meta_path = export(args.out, args.n, args.seed, args.split, args.name, args.describe, args.ground, types,
                           args.workers)
    except ConfigError as e:
        parser.error(str(e))
    entry = next(iter(json.loads(meta_path.read_text()).values()))
    counts = type_counts(entry["annotation"])
    print(f"wrote {args.n} examples to {args.out}; meta {meta_path}")
    print("question types: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
