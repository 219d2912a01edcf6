"""Any InternVL checkpoint as a process reward model (VisualPRM): split a response into steps, score each.

Facts (docs: mpo-prm-eval.md section 2; InternVL's `tools/reasoning_data_pipeline`): a response's steps are
its `\\n\\n`-separated parts, merged into at most `max_steps` chunks of `ceil(len / max_steps)` consecutive
parts. The PRM conversation is multi-turn: the PRM system prompt, then one user turn per step (the first one
is `### Question:\\n{question}\\n\\n### Solution Process:\\n{step}`, holding the images) and, after each, an
assistant turn holding the placeholder `+`. One forward pass reads, at the token before every placeholder,
the next-token logits of `+` and `-`; a step's score is P(`+`) renormalised over the two. A response's
score aggregates its step scores (the mean, as VisualPRM's soft scoring; `min`, `last`, `sum` on request).

The responses to one question share everything up to their first step (system prompt, question, images),
so that prefix runs once and its keys/values serve every response of the batch: same numbers as one full
forward per response, at a fraction of the cost for long system prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ConfigError, ImageTokenMismatchError
from ..models.decoder import causal_mask
from ..processing.prompt import IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, expand_images
from ..processing.templates import Template, get_template, render_spans

# InternVL's `PRM_SYSTEM_PROMPT` (tools/reasoning_data_pipeline/utils/constants.py), verbatim: VisualPRM was
# trained with it, so scoring uses it too.
PRM_SYSTEM_PROMPT = """You are an advanced AI assistant, designed to serve as a process supervision model. \
In this task, I will provide a problem statement followed by the first step of the solution process. For each \
subsequent turn, I will give you a new step in the solution. Your role is to assess whether the solution \
process is correct up to the current step.

- In the **first round**, I will input the problem and the first step of the solution process.
- In **each subsequent round**, I will provide the next step in the solution.

For each step, you should:

- Respond with **"+"** if you believe the solution process is correct up to this step.
- Respond with **"-"** if you detect any issues or errors in the process up to this step.

Please note:
- Only respond with **"+"** or **"-"**. Do not provide any additional explanations, comments, or justifications.

Your task is to verify the accuracy and correctness of each step in the given solution process."""

PLACEHOLDER = "+"  # every assistant turn of the scoring prompt; its logits row is read
GOOD, BAD = "+", "-"
STEP_SEPARATOR = "\n\n"
AGGREGATIONS = ("mean", "min", "last", "sum")


def split_response(response: str, sep: str = STEP_SEPARATOR, max_steps: int | None = None) -> list[str]:
    """A response's steps: its `sep`-separated parts, merged into at most `max_steps` chunks.

    Parts are grouped `ceil(parts / max_steps)` at a time, in order, and re-joined with `sep`, so
    `sep.join(steps) == response` always holds. `max_steps=1` gives the whole response as one step.
    """
    parts = response.split(sep)
    if max_steps is None:
        return parts
    if max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1 (or None for no merging), got {max_steps}")
    group = math.ceil(len(parts) / max_steps)
    return [sep.join(parts[i:i + group]) for i in range(0, len(parts), group)]


def first_turn(question: str, step: str) -> str:
    """The user turn that carries the question and the first step."""
    return f"### Question:\n{question}\n\n### Solution Process:\n{step}"


def prm_messages(question: str, steps: Sequence[str]) -> list[tuple[int, str]]:
    """The PRM conversation after the system prompt: (user, step), (assistant, '+') per step."""
    messages: list[tuple[int, str]] = []
    for i, step in enumerate(steps):
        messages += [(0, first_turn(question, step) if i == 0 else step), (1, PLACEHOLDER)]
    return messages


def prm_conversation(question: str, steps: Sequence[str], scores: Sequence[float], threshold: float = 0.0,
                     system_message: str = PRM_SYSTEM_PROMPT) -> list[dict]:
    """A PRM training conversation in the official SFT format (InternVL's `item2conv_prm`): the system prompt,
    then per step a human turn and a gpt turn `+` when the step's Monte Carlo score is above `threshold`
    (`-` otherwise). Trained as plain SFT, the loss falls on the `+` / `-` answers."""
    if len(steps) != len(scores):
        raise ConfigError(f"{len(steps)} steps but {len(scores)} scores")
    conv = [{"from": "system", "value": system_message}]
    for i, (step, score) in enumerate(zip(steps, scores)):
        conv += [{"from": "human", "value": first_turn(question, step) if i == 0 else step},
                 {"from": "gpt", "value": GOOD if score > threshold else BAD}]
    return conv


def with_image_placeholder(question: str, num_images: int) -> str:
    """`<image>\\n` + question when images are given and the question has no placeholder of its own."""
    if num_images and IMAGE_PLACEHOLDER not in question:
        return IMAGE_PLACEHOLDER + "\n" + question
    return question


def build_prm_prompt(template: Template, question: str, steps: Sequence[str], num_patches_list: Sequence[int] = (),
                     num_image_token: int = 256, system_message: str = PRM_SYSTEM_PROMPT) -> tuple[str, list[int]]:
    """The scoring prompt (images expanded) and the character offset of each step's `+` placeholder in it."""
    question = with_image_placeholder(question, len(num_patches_list))
    spans = render_spans(template, prm_messages(question, steps), system_message)
    text = "".join(t for t, _ in spans)
    starts, at = [], 0
    for piece, supervised in spans:
        if supervised:  # the assistant turns: '+' and the turn's closing separator
            starts.append(at)
        at += len(piece)
    expanded = expand_images(text, list(num_patches_list), num_image_token)
    shift = len(expanded) - len(text)  # the images all sit in the first user turn, before every placeholder
    return expanded, [s + shift for s in starts]


def candidate_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of `+` and `-`, each a single token (VisualPRM reads exactly these two logits)."""
    ids = []
    for text in (GOOD, BAD):
        try:
            ids.append(tokenizer.convert_tokens_to_ids(text))
        except KeyError:
            enc = tokenizer.encode(text)
            if len(enc) != 1:
                raise ConfigError(f"the tokenizer has no single token for {text!r}: it cannot score steps") from None
            ids.append(enc[0])
    return ids[0], ids[1]


def tokenize_prm_prompt(tokenizer, text: str, placeholder_chars: Sequence[int]) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and, per step, the position whose next-token logits score it (the token
    before its `+`)."""
    ids, offsets = tokenizer.encode_with_offsets(text, add_special_tokens=True)
    plus, _ = candidate_token_ids(tokenizer)
    by_start = {start: i for i, (start, end) in enumerate(offsets) if end > start}
    positions = []
    for char in placeholder_chars:
        i = by_start.get(char)
        if i is None or ids[i] != plus or i == 0:
            raise ConfigError(f"the tokenizer merges the {PLACEHOLDER!r} placeholder with its neighbours at "
                              f"character {char}; it cannot be used as a PRM with this template")
        positions.append(i - 1)
    return ids, positions


class _PrefixKV:
    """The decoder's cache protocol over a shared prefix: records the prefix's keys/values on the first
    (one-row) pass, then serves them, expanded to every row, in front of each later pass's own."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.recording = True

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.recording:
            self.k[layer], self.v[layer] = k, v
            return k, v
        b = k.shape[0]
        pk, pv = self.k[layer], self.v[layer]
        return (torch.cat([pk.expand(b, -1, -1, -1), k], dim=2), torch.cat([pv.expand(b, -1, -1, -1), v], dim=2))


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    n = min(len(r) for r in rows)
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


@torch.inference_mode()
def _forward_scores(model, rows: list[list[int]], positions: list[list[int]], image_features: torch.Tensor | None,
                    plus: int, minus: int) -> list[list[float]]:
    """P(+) renormalised over {+, -} at each requested position of each row, in one batched pass
    (the rows' shared prefix computed once)."""
    device = next(model.parameters()).device
    lm = model.language_model
    embeds = [model.embed(torch.tensor([ids], device=device), image_features=image_features)[0] for ids in rows]
    # the prefix must end before the first position read, so every read position lies in the batched part
    p = min(_common_prefix(rows), min(pos[0] for pos in positions))
    cache = _PrefixKV()
    if p:
        lm(embeds[0][None, :p], torch.arange(p, device=device)[None], None, cache)
    cache.recording = False
    width = max(len(r) for r in rows) - p
    batch = torch.zeros(len(rows), width, embeds[0].shape[-1], dtype=embeds[0].dtype, device=device)
    valid = torch.zeros(len(rows), p + width, dtype=torch.bool, device=device)
    valid[:, :p] = True
    for i, e in enumerate(embeds):
        batch[i, :len(e) - p] = e[p:]
        valid[i, p:len(e)] = True
    pos_ids = torch.arange(p, p + width, device=device)[None].expand(len(rows), -1)
    hidden = lm(batch, pos_ids, causal_mask(valid, width, p), cache if p else None)
    out = []
    for i, pos in enumerate(positions):
        logits = lm.logits(hidden[i, torch.tensor(pos, device=device) - p]).float()
        out.append(logits[:, [plus, minus]].softmax(-1)[:, 0].tolist())
    return out


def score_steps(model, tokenizer, question: str, response_list: Sequence[str], pixel_values: torch.Tensor | None = None,
                num_patches_list: Sequence[int] | None = None, max_steps: int | None = None,
                system_message: str = PRM_SYSTEM_PROMPT, batch_size: int = 16) -> list[list[float]]:
    """Each response's step scores, P(`+`) per step in [0, 1], as VisualPRM computes them.

    Args:
        model: An InternVL (the PRM) in eval mode.
        tokenizer: Its tokenizer.
        question: The question the responses answer; `<image>\\n` is prepended when images are given and
            it has no placeholder (write `Image-1: <image>\\n...` for several images).
        response_list: Responses; each is split with `split_response(response, max_steps=max_steps)`.
        pixel_values: Tiles of the question's images (N, 3, S, S) for the PRM's own image size, or None.
        num_patches_list: Tiles per image (default: all tiles are one image).
        max_steps: Merge each response into at most this many steps (1 scores it as a whole: an ORM).
        system_message: The PRM system prompt (VisualPRM's by default).
        batch_size: Responses per forward pass.
    """
    if not response_list:
        return []
    if num_patches_list is None:
        num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
    if pixel_values is not None and pixel_values.shape[0] != sum(num_patches_list):
        raise ImageTokenMismatchError(f"pixel_values has {pixel_values.shape[0]} tiles but num_patches_list sums to "
                                      f"{sum(num_patches_list)}")
    if pixel_values is None and num_patches_list:
        raise ImageTokenMismatchError(f"num_patches_list {list(num_patches_list)} given without pixel_values")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if model.img_context_token_id is None:
        model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    template = get_template(model.config.template)
    plus, minus = candidate_token_ids(tokenizer)
    rows, positions = [], []
    for response in response_list:
        steps = split_response(response, max_steps=max_steps)
        text, chars = build_prm_prompt(template, question, steps, num_patches_list, model.num_image_token,
                                       system_message)
        ids, pos = tokenize_prm_prompt(tokenizer, text, chars)
        rows.append(ids)
        positions.append(pos)
    features = None
    if pixel_values is not None:
        with torch.inference_mode():
            param = next(model.parameters())
            features = model.extract_feature(pixel_values.to(param.device, param.dtype))
    scores: list[list[float]] = []
    for start in range(0, len(rows), batch_size):
        scores += _forward_scores(model, rows[start:start + batch_size], positions[start:start + batch_size],
                                  features, plus, minus)
    return scores


def aggregate(step_scores: Sequence[float], how: str = "mean") -> float:
    """One response score from its step scores: mean (VisualPRM), min, last or sum."""
    if how not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {how!r}; known: {', '.join(AGGREGATIONS)}")
    if not step_scores:
        raise ConfigError("a response has at least one step")
    if how == "mean":
        return sum(step_scores) / len(step_scores)
    if how == "min":
        return min(step_scores)
    if how == "last":
        return step_scores[-1]
    return sum(step_scores)


def rank(scores: Sequence[float]) -> list[int]:
    """Indices from best to worst score; equal scores keep their input order."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable


def select_best_response(model, tokenizer, question: str, response_list: Sequence[str],
                         pixel_values: torch.Tensor | None, num_patches_list: Sequence[int] | None = None, max_steps: int | None = None,
                         aggregation: str = "mean", return_scores: bool = False, **kw):
    """The responses sorted best first by their aggregated PRM score (ties keep input order), as
    VisualPRM's `select_best_response`; with `return_scores`, also each sorted response's score."""
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
    steps = score_steps(model, tokenizer, question, response_list, pixel_values, num_patches_list, max_steps, **kw)
    scores = [aggregate(s, aggregation) for s in steps]
    order = rank(scores)
    ranked = [response_list[i] for i in order]
    return (ranked, [scores[i] for i in order]) if return_scores else ranked
