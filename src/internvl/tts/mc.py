"""Monte Carlo step scores: how VisualPRM400K labels the steps of sampled responses.

Facts (InternVL `tools/reasoning_data_pipeline/visualprm_data_pieline.py`, docs: mpo-prm-eval.md 2.2): sample
responses from the policy; split each into steps (`split_response`, at most `max_steps`); for every prefix
`steps[:k+1]`, sample continuations with the prefix as the start of the assistant's reply; the step's score
is the fraction of `prefix + continuation` whose final answer is correct. A step is labelled `+` when its
score is above the threshold (0.0 in the official build script), else `-`.

One deviation, for cost: the last prefix is the whole response, so its score is the response's own
correctness (the official pipeline samples continuations of it too, which can only end the turn). Prefixes
repeated across the responses of one question are scored once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..engine.engine import Engine
from ..engine.sampling import SamplingParams
from .best_of_n import run_groups
from .prm import STEP_SEPARATOR, split_response


@dataclass
class Problem:
    """One question for the policy: its rendered prompt (ending with the assistant's role prefix), its
    tiles, and the check of a finished response."""

    prompt: str
    pixel_values: torch.Tensor | None
    is_correct: Callable[[str], bool]


@dataclass
class MCConfig:
    responses: int = 4  # sampled responses per problem (official: --num-return-sequences 4)
    mc: int = 16  # continuations per step prefix (official: --num-mc-sequences 16)
    max_steps: int | None = None  # merge responses into at most this many steps
    temperature: float = 1.0  # the official sampling settings of the PRM data pipeline
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0


def _params(n: int, cfg: MCConfig, seed: int) -> list[SamplingParams]:
    return [SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                           top_p=cfg.top_p, seed=seed + i) for i in range(n)]


def sample_responses(engine: Engine, tokenizer, problems: Sequence[Problem], n: int, cfg: MCConfig,
                     seed_offset: int = 0) -> list[list[str]]:
    """n sampled responses per problem (seeds fixed per problem), through one engine."""
    base = cfg.seed * 1_000_003 + seed_offset
    groups = ((tokenizer(p.prompt, return_tensors=None)["input_ids"], p.pixel_values,
               _params(n, cfg, base + 10_000 * i)) for i, p in enumerate(problems))
    return run_groups(engine, groups)


def step_scores(engine: Engine, tokenizer, problems: Sequence[Problem], responses: Sequence[Sequence[str]],
                cfg: MCConfig) -> list[list[list[dict]]]:
    """For each problem and each of its responses, per step: {step, score, num_mc_correct, num_mc_total}."""
    jobs: dict[tuple[int, str], int] = {}  # (problem, prefix) -> job index
    job_list: list[tuple[int, str]] = []
    split = [[split_response(r, max_steps=cfg.max_steps) for r in rs] for rs in responses]
    for p, per_problem in enumerate(split):
        for steps in per_problem:
            for k in range(len(steps) - 1):
                key = (p, STEP_SEPARATOR.join(steps[:k + 1]))
                if key not in jobs:
                    jobs[key] = len(job_list)
                    job_list.append(key)
    base = cfg.seed * 1_000_003 + 500_000_000
    groups = ((tokenizer(problems[p].prompt + prefix, return_tensors=None)["input_ids"], problems[p].pixel_values,
               _params(cfg.mc, cfg, base + 1_000 * j)) for j, (p, prefix) in enumerate(job_list))
    continuations = run_groups(engine, groups, strip=False)
    outcomes = [[problems[p].is_correct(prefix + c) for c in conts]
                for (p, prefix), conts in zip(job_list, continuations)]
    out = []
    for p, per_problem in enumerate(split):
        scored_responses = []
        for response, steps in zip(responses[p], per_problem):
            scored = []
            for k, step in enumerate(steps):
                if k == len(steps) - 1:
                    results = [problems[p].is_correct(response)]
                else:
                    results = outcomes[jobs[(p, STEP_SEPARATOR.join(steps[:k + 1]))]]
                scored.append({"step": step, "score": sum(results) / len(results),
                               "num_mc_correct": int(sum(results)), "num_mc_total": len(results)})
            scored_responses.append(scored)
        out.append(scored_responses)
    return out
