"""The `shapes` evaluation task: held-out questions about the tiny model's synthetic world.

Samples come from `tiny/world.py` on the held-out seeds (10**9 + seed + i), which training never uses;
the prompt is the question exactly as the world words it (`<image>\\n...`, or `Image-1: <image>\\nImage-2:
<image>\\n...` for the comparison); scoring is the first-word exact match of `metrics.py`. Categories are
the seven question types, balanced (seed i asks type i % 7).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..tiny import world
from ..tiny.steps import STEP_INSTRUCTION
from .metrics import first_word_match
from .tasks import Sample


class ShapesTask:
    name = "shapes"

    def examples(self, n: int, seed: int) -> Iterator[Sample]:
        for example_seed in world.split_seeds("heldout", n, seed):
            example = world.make_example(example_seed)
            yield Sample(id=f"heldout-{example.seed}", category=example.qtype, question=example.prompt,
                         answer=example.answer, load_images=example.images)

    def prompt(self, sample: Sample) -> str:
        return sample.question

    def step_prompt(self, sample: Sample) -> str:
        """The question asking for a step-wise answer (`tiny/steps.py`), for Best-of-N with a PRM."""
        return f"{sample.question}\n{STEP_INSTRUCTION}"

    def score(self, prediction: str, sample: Sample) -> float:
        return first_word_match(prediction, sample.answer)
