"""A validated request + its conversation -> what the engine takes: prompt ids, image tiles, sampling params.

The prompt is built exactly as `chat()` / `internvl chat` build it (`tokenize_query` with the model's
template, system message and `<image>` expansion; control tokens spelled in the request's text are plain
text unless `--special-tokens-in-text`), so a request here and the same turn in the CLI give the same
tokens. Context limits are checked here with the numbers in the message, so the engine never refuses a
request it was handed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..chat import InternVLChatModel
from ..engine.sampling import SamplingParams
from ..processing.prompt import IMG_CONTEXT_TOKEN, tokenize_query
from ..processing.templates import get_template, stop_strings
from ..processing.tokenizer import Tokenizer
from .config import ServeConfig
from .media import load_images
from .messages import Conversation
from .protocol import APIError, ChatCompletionRequest


@dataclass
class Prepared:
    prompt_ids: list[int]
    pixel_values: torch.Tensor | None  # (tiles, 3, S, S), all images in placeholder order
    params: list[SamplingParams]  # one per choice (n)
    image_tokens: int


def stop_token_ids(template_name: str, tokenizer: Tokenizer) -> list[int]:
    """The template's stop strings that are single tokens: the separator chat() stops at, then e.g. Hermes-2's
    <|endoftext|>, which decodes to nothing (a special token) and so could never match as a stop string."""
    ids = []
    for s in stop_strings(get_template(template_name)):
        try:
            ids.append(tokenizer.convert_tokens_to_ids(s))
        except KeyError:
            pass
    return ids


class Prompter:
    def __init__(self, model: InternVLChatModel, tokenizer: Tokenizer, config: ServeConfig, max_len: int) -> None:
        self.tokenizer, self.config, self.max_len = tokenizer, config, max_len
        cfg = model.config
        self.template = get_template(cfg.template)
        self.default_system = model._system()
        self.num_image_token = model.num_image_token
        self.image_size, self.min_tiles, self.use_thumbnail = cfg.image_size, cfg.min_dynamic_patch, cfg.use_thumbnail
        self.max_tiles = config.max_tiles or cfg.max_dynamic_patch
        self.img_context_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)

    def check(self, req: ChatCompletionRequest, conv: Conversation) -> None:
        """Cheap checks before any image is fetched: tile limits, and whether the images can fit at all."""
        if req.max_dynamic_patch is not None and req.max_dynamic_patch > self.max_tiles:
            raise APIError(400, f"max_dynamic_patch={req.max_dynamic_patch} exceeds the server's limit of "
                                f"{self.max_tiles} tiles per image", param="max_dynamic_patch")
        for ref in conv.images:
            if ref.max_tiles is not None and ref.max_tiles > self.max_tiles:
                raise APIError(400, f"{ref.where}: max_dynamic_patch={ref.max_tiles} exceeds the server's limit "
                                    f"of {self.max_tiles} tiles per image", param=ref.where)
        per_image = self.num_image_token + 2  # one tile between <img> and </img>
        if len(conv.images) * per_image >= self.max_len:
            raise APIError(400, f"the request has {len(conv.images)} images; each needs at least {per_image} "
                                f"tokens, so at most {(self.max_len - 1) // per_image} fit the context of "
                                f"{self.max_len} tokens", param="messages", code="context_length_exceeded")
        if len(conv.images) > self.config.max_images:
            raise APIError(400, f"the request has {len(conv.images)} images, over the server's limit of "
                                f"{self.config.max_images} per request", param="messages")

    def prepare(self, req: ChatCompletionRequest, conv: Conversation) -> Prepared:
        """Fetch and tile the images, build and tokenize the prompt, derive sampling params (blocking)."""
        default_tiles = req.max_dynamic_patch or self.max_tiles
        tiles = load_images(conv.images, self.config, self.image_size,
                            [r.max_tiles or default_tiles for r in conv.images], self.min_tiles, self.use_thumbnail)
        counts = [t.shape[0] for t in tiles]
        system = conv.system if conv.system is not None else self.default_system
        ids = tokenize_query(self.tokenizer, self.template, conv.question, conv.history, counts, self.num_image_token,
                             system, user_system=conv.system is not None,
                             special_tokens_in_text=self.config.special_tokens_in_text)
        image_tokens = sum(counts) * self.num_image_token
        if sum(t == self.img_context_id for t in ids) != image_tokens:  # guards the engine's feature scatter
            raise APIError(400, "the prompt's image tokens do not match its images; is an image token in the text?")
        pixel_values = torch.cat(tiles) if tiles else None
        return Prepared(ids, pixel_values, self.sampling(req, len(ids), image_tokens, len(counts)), image_tokens)

    def sampling(self, req: ChatCompletionRequest, prompt_len: int, image_tokens: int = 0, images: int = 0
                 ) -> list[SamplingParams]:
        room = self.max_len - prompt_len
        of_images = f", {image_tokens} of them for {images} image(s)" if images else ""
        if room < 1:
            raise APIError(400, f"the prompt is {prompt_len} tokens{of_images}, which does not fit the context "
                                f"of {self.max_len} tokens; shorten the conversation or use fewer tiles",
                           param="messages", code="context_length_exceeded")
        asked = req.answer_tokens
        if asked is not None and asked > room:
            name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise APIError(400, f"{name}={asked} plus the prompt's {prompt_len} tokens{of_images} exceeds the "
                                f"context of {self.max_len} tokens; at most {room} answer tokens fit",
                           param=name, code="context_length_exceeded")
        max_new = asked or min(self.config.default_max_tokens, room)
        temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
        try:
            return [SamplingParams(max_new_tokens=max_new, temperature=temperature, top_k=req.top_k or 0,
                                   top_p=1.0 if req.top_p is None else req.top_p,
                                   repetition_penalty=req.repetition_penalty or 1.0,
                                   seed=None if req.seed is None else req.seed + i, stop=list(req.stop))
                    for i in range(req.n)]
        except ValueError as e:  # the protocol checks the same ranges; this is the engine's own guard
            raise APIError(400, str(e)) from None
