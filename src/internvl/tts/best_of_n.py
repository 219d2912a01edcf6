"""Best-of-N: sample N answers in one engine batch, keep the one a verifier prefers.

As VLMEvalKit's InternVL Best-of-N harness (docs: mpo-prm-eval.md section 2.4): candidate 0 is the greedy
answer, candidates 1..N-1 are sampled (temperature 0.6, top-p 0.95). All N go into one engine together, so
they prefill and decode as one batch, and the question's images are encoded once for all of them. Then:
- `prm`: a process reward model scores every step of every candidate; the best mean step score wins;
- `orm`: the same model scores each candidate as one step (an outcome reward model);
- `majority`: self-consistency, the most frequent final answer wins (its first candidate is returned).
Ties go to the earlier candidate, so the greedy answer wins a tie.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..chat import ChatSession
from ..engine.engine import Engine
from ..engine.sampling import SamplingParams
from ..errors import ConfigError, ImageTokenMismatchError
from ..eval.answer_engine import make_engine
from ..processing.image import load_question_images
from ..processing.prompt import build_query, multi_image_prompt
from ..processing.templates import get_template
from . import prm as prm_lib

log = logging.getLogger(__name__)

STRATEGIES = ("prm", "orm", "majority")
SAMPLE_TEMPERATURE, SAMPLE_TOP_P = 0.6, 0.95  # VLMEvalKit's Best-of-N sampling settings
# The final answer of a step-wise response, as InternVL's MPO post-processing finds it.
_FINAL_ANSWER = re.compile(r"(?:Final answer:|Answer:)\s*(.*)")


def extract_answer(response: str) -> str:
    """The text after the last `Answer:` / `Final answer:` of a response, else the whole response (stripped)."""
    found = _FINAL_ANSWER.findall(response)
    return found[-1].strip() if found else response.strip()


def answer_key(answer: str) -> str:
    """What majority voting compares: lowercased, whitespace collapsed, punctuation stripped at the ends."""
    return " ".join(answer.lower().split()).strip(string.punctuation + " ")


def majority_index(answers: Sequence[str]) -> int:
    """The first candidate whose answer is the most frequent (ties: the answer seen first)."""
    if not answers:
        raise ConfigError("majority vote over no candidates")
    keys = [answer_key(a) for a in answers]
    counts = Counter(keys)
    top = max(counts.values())
    return next(i for i, k in enumerate(keys) if counts[k] == top)


def candidate_params(n: int, max_new_tokens: int = 256, temperature: float = SAMPLE_TEMPERATURE,
                     top_p: float = SAMPLE_TOP_P, seed: int = 0) -> list[SamplingParams]:
    """Candidate 0 greedy, candidate i > 0 sampled with seed `seed + i` (so runs repeat exactly)."""
    if n < 1:
        raise ConfigError(f"best-of-N needs N >= 1, got {n}")
    if temperature <= 0:
        raise ConfigError(f"the sampled candidates need a temperature > 0, got {temperature}")
    greedy = SamplingParams(max_new_tokens=max_new_tokens)
    return [greedy] + [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                      seed=seed + i) for i in range(1, n)]


def submit_group(engine: Engine, prompt_ids: list[int], pixel_values: torch.Tensor | None,
                 params: Sequence[SamplingParams]) -> list:
    """Submit one prompt once per parameter set, the images encoded once for the whole group."""
    seqs = [engine.submit(prompt_ids, None, p) for p in params]
    if pixel_values is not None:
        with torch.inference_mode():
            features = engine.model.extract_feature(pixel_values.to(engine.device, engine.dtype))
        for seq in seqs:  # the engine embeds a request's precomputed features as it would its own
            seq.image_features = features
    return seqs


def generate_candidates(engine: Engine, prompt_ids: list[int], pixel_values: torch.Tensor | None,
                        params: Sequence[SamplingParams]) -> list[str]:
    """Every candidate's text, generated together in one engine batch."""
    seqs = submit_group(engine, prompt_ids, pixel_values, params)
    while not all(s.finished for s in seqs):
        engine.step()
    return [s.text.strip() for s in seqs]


def run_groups(engine: Engine, groups: Iterable[tuple[list[int], torch.Tensor | None, Sequence[SamplingParams]]],
               window: int | None = None, strip: bool = True) -> list[list[str]]:
    """Many groups (one prompt, several parameter sets each) through one engine, in order.

    Groups are submitted whole, only while fewer than `window` requests wait (default: the engine's batch
    size), so each group's requests are admitted together and memory holds a window, not every group.
    `strip=False` keeps each text exactly as generated (continuations that must join a prefix).
    """
    window = window or engine.cache.slots
    pending = iter(groups)
    results: list[list[str] | None] = []
    active: list[tuple[int, list]] = []
    exhausted = False
    while True:
        while not exhausted and len(engine.waiting) < window:
            group = next(pending, None)
            if group is None:
                exhausted = True
            else:
                active.append((len(results), submit_group(engine, *group)))
                results.append(None)
        if not engine.has_work():
            break
        engine.step()
        for i, seqs in [a for a in active if all(s.finished for s in a[1])]:
            results[i] = [s.text.strip() if strip else s.text for s in seqs]
        active = [a for a in active if results[a[0]] is None]
    return results


@dataclass
class Verifier:
    """A PRM (any InternVL checkpoint) with its tokenizer, and how it scores."""

    model: object
    tokenizer: object
    aggregation: str = "mean"
    max_steps: int | None = None
    batch_size: int = 16

    @classmethod
    def load(cls, path: str, dtype: torch.dtype | None = None, device: str = "cpu", **kw) -> Verifier:
        from ..chat import from_pretrained
        from ..tiny import PRM_DIR
        if Path(path).resolve() == PRM_DIR.resolve() and not (PRM_DIR / "config.json").exists():
            raise ConfigError(f"no tiny PRM is shipped at {PRM_DIR} yet: train one with `make tiny-prm`, or pass "
                              "--prm DIR (any InternVL checkpoint can score steps)")
        model, tokenizer = from_pretrained(path, dtype=dtype, device=device)
        return cls(model.eval(), tokenizer, **kw)

    def step_scores(self, question: str, responses: Sequence[str], pixel_values: torch.Tensor | None,
                    num_patches_list: Sequence[int] | None, orm: bool = False) -> list[list[float]]:
        return prm_lib.score_steps(self.model, self.tokenizer, question, responses, pixel_values, num_patches_list,
                                   max_steps=1 if orm else self.max_steps, batch_size=self.batch_size)

    def scores(self, question: str, responses: Sequence[str], pixel_values: torch.Tensor | None,
               num_patches_list: Sequence[int] | None, orm: bool = False) -> list[float]:
        steps = self.step_scores(question, responses, pixel_values, num_patches_list, orm)
        return [prm_lib.aggregate(s, "last" if orm else self.aggregation) for s in steps]


def choose(strategy: str, candidates: Sequence[str], scores: Sequence[float] | None = None) -> int:
    """The winning candidate's index: the first best score (prm, orm) or the first of the majority answer."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown Best-of-N strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if strategy == "majority":
        return majority_index([extract_answer(c) for c in candidates])
    if scores is None or len(scores) != len(candidates):
        raise ConfigError(f"strategy {strategy!r} needs one score per candidate")
    return prm_lib.rank(scores)[0]


@dataclass
class BestOfNResult:
    response: str  # the chosen candidate
    index: int  # its position among the candidates (0 = greedy)
    candidates: list[str]
    scores: list[float] | None = None  # verifier score per candidate (prm / orm)
    answers: list[str] = field(default_factory=list)  # each candidate's extracted final answer


def best_of_n(model, tokenizer, pixel_values: torch.Tensor | None, question: str, n: int = 8,
              strategy: str = "prm", verifier: Verifier | str | None = None,
              num_patches_list: Sequence[int] | None = None,
              prm_pixel_values: torch.Tensor | None = None, prm_num_patches_list: Sequence[int] | None = None,
              generation_config: dict | None = None,
              temperature: float = SAMPLE_TEMPERATURE, top_p: float = SAMPLE_TOP_P, seed: int = 0,
              history: Sequence[tuple[str, str]] | None = None, prm_question: str | None = None) -> BestOfNResult:
    """Answer `question` N times in one engine batch and return the candidate `strategy` prefers.

    Args:
        model, tokenizer: The policy (an `InternVLChatModel` and its tokenizer).
        pixel_values: The question's tiles for the policy (as for `model.chat`), or None.
        question: The user turn (`<image>\\n` is prepended when images are given and it has none).
        n: Number of candidates; candidate 0 is greedy, the others sampled at `temperature` / `top_p`
            with seeds `seed + i`.
        strategy: "prm", "orm" or "majority".
        verifier: The PRM (a `Verifier`, or a checkpoint path; default the shipped tiny PRM). Unused by
            "majority".
        num_patches_list: Tiles per image.
        prm_pixel_values: The same images tiled for the PRM when its image size differs from the policy's
            (default: `pixel_values`), with `prm_num_patches_list` (default: all one image).
        generation_config: Its `max_new_tokens` bounds every candidate (default 256); the sampling
            settings are `temperature`, `top_p` and `seed`.
        history: Earlier (question, answer) turns of the conversation (the PRM sees only this question).
        prm_question: The question as the PRM should read it (default: `question`).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown Best-of-N strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if num_patches_list is None:
        num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
    if pixel_values is not None and pixel_values.shape[0] != sum(num_patches_list):
        raise ImageTokenMismatchError(f"pixel_values has {pixel_values.shape[0]} tiles but num_patches_list sums to "
                                      f"{sum(num_patches_list)}")
    max_new_tokens = int((generation_config or {}).get("max_new_tokens", 256))
    params = candidate_params(n, max_new_tokens, temperature, top_p, seed)
    cfg = model.config
    system = getattr(model, "system_message", None) or cfg.system_message
    query, question = build_query(get_template(cfg.template), question, history, num_patches_list,
                                  model.num_image_token, system, return_question=True)
    engine = make_engine(model, tokenizer, max_batch=n)
    candidates = generate_candidates(engine, tokenizer(query, return_tensors=None)["input_ids"], pixel_values, params)
    answers = [extract_answer(c) for c in candidates]
    scores = None
    if strategy != "majority" and n > 1:
        verifier = _verifier(verifier)
        if prm_pixel_values is None:
            if pixel_values is not None and verifier.model.config.image_size != cfg.image_size:
                raise ConfigError(f"the PRM reads {verifier.model.config.image_size}px tiles but the policy's are "
                                  f"{cfg.image_size}px: pass prm_pixel_values tiled for the PRM")
            prm_pixel_values, prm_num_patches_list = pixel_values, num_patches_list
        scores = verifier.scores(prm_question or question, candidates, prm_pixel_values, prm_num_patches_list,
                                 orm=strategy == "orm")
    index = 0 if n == 1 else choose(strategy, candidates, scores)
    for i, c in enumerate(candidates):
        log.info("candidate %d%s%s: %r", i, "" if scores is None else f" score {scores[i]:.4f}",
                 " (chosen)" if i == index else "", c)
    return BestOfNResult(candidates[index], index, candidates, scores, answers)


def _verifier(verifier: Verifier | str | None) -> Verifier:
    if isinstance(verifier, Verifier):
        return verifier
    from ..tiny import DEFAULT_PRM
    return Verifier.load(verifier or DEFAULT_PRM)


def image_prompt(num_images: int) -> str:
    """The placeholder lines for a question about `num_images` images, as the official chat writes them."""
    if num_images == 0:
        return ""
    return "<image>\n" if num_images == 1 else multi_image_prompt(num_images)


class BestOfNSession(ChatSession):
    """`ChatSession` (the CLI's conversation) answering each question by Best-of-N instead of streaming one
    answer. The PRM reads every image of the conversation, tiled for its own image size, and this question."""

    def __init__(self, model, tokenizer, generation_config: dict, n: int, strategy: str = "prm",
                 verifier: Verifier | None = None, max_tiles: int | None = None,
                 temperature: float = SAMPLE_TEMPERATURE, top_p: float = SAMPLE_TOP_P, seed: int = 0) -> None:
        if n < 1:
            raise ConfigError(f"--best-of must be >= 1, got {n}")
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown Best-of-N strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.n, self.strategy, self.verifier = n, strategy, verifier
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.last: BestOfNResult | None = None
        super().__init__(model, tokenizer, generation_config, max_tiles)

    def reset(self) -> None:
        super().reset()
        self.images: list[str] = []

    def add_image(self, path: str) -> None:
        super().add_image(path)
        self.images.append(path)

    def add_video(self, path: str, num_frames: int) -> None:
        raise ConfigError("Best-of-N does not take a video yet; ask about images")

    def ask(self, question: str) -> Iterator[str]:
        """Yield the chosen answer (once), then record the turn."""
        text = question
        if len(self.pending) > 1:
            self.pending = [f"Image-{i + 1}: <image>" for i in range(len(self.pending))]
        if self.pending:
            question = "\n".join(self.pending) + "\n" + question
        self.pending = []
        pixel_values = torch.cat(self.tiles) if self.tiles else None
        prm_pixels = prm_patches = None
        if self.verifier is not None and self.images:
            tiles = load_question_images(self.images, self.verifier.model.config)
            prm_pixels, prm_patches = torch.cat(tiles), [t.shape[0] for t in tiles]
        self.last = best_of_n(self.model, self.tokenizer, pixel_values, question, self.n, self.strategy, self.verifier,
                              [t.shape[0] for t in self.tiles], prm_pixels, prm_patches, self.generation_config,
                              self.temperature, self.top_p, self.seed, self.history,
                              prm_question=image_prompt(len(self.images)) + text)
        yield self.last.response
        self.history.append((question, self.last.response))
