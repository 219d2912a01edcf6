"""The evaluation task protocol and the task registry.

A task makes its samples (images + question + reference answer, each with a category for the per-type
table), turns a sample into the user turn sent to the model, and scores a prediction. The runner
(`runner.py`) knows nothing else about a task. Tasks are registered by name; built-in ones are imported
only when asked for, so the registry costs nothing at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from ..errors import ConfigError


@dataclass(frozen=True)
class Sample:
    """One evaluation question."""

    id: str
    category: str  # accuracy is also reported per category (e.g. the question type)
    question: str  # the human turn, with one `<image>` placeholder per image
    answer: str  # the reference answer
    load_images: Callable[[], list[Image.Image]]  # on demand, so n samples never hold n images in memory


class Task(Protocol):
    """What the runner needs from an evaluation task."""

    name: str

    def examples(self, n: int, seed: int) -> Iterator[Sample]:
        """n samples, the same ones for the same (n, seed)."""
        ...

    def prompt(self, sample: Sample) -> str:
        """The user turn for the model (the question, possibly with task-specific instructions)."""
        ...

    def score(self, prediction: str, sample: Sample) -> float:
        """The prediction's score in [0, 1]."""
        ...


# name -> "module:attribute" (imported lazily) or a factory registered at run time
TASKS: dict[str, str | Callable[[], Task]] = {
    "shapes": "internvl.eval.shapes:ShapesTask",
}


RESERVED = ("run", "score", "compare", "export-shapes")  # the `internvl eval` commands beside the tasks


def register(name: str, factory: Callable[[], Task]) -> None:
    """Add a task (a class or any zero-argument factory) under `name`."""
    if name in RESERVED:
        raise ConfigError(f"{name!r} is an `internvl eval` command, not available as a task name")
    if name in TASKS:
        raise ConfigError(f"an evaluation task named {name!r} is already registered")
    TASKS[name] = factory


def get_task(name: str) -> Task:
    """A fresh instance of the task called `name`.

    Raises:
        ConfigError: The name is not registered; the message lists the known tasks.
    """
    try:
        factory = TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown evaluation task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory()
