"""The official quick-start API, drop-in: `model.chat(...)`, `model.batch_chat(...)`, `from_pretrained(...)`.

Spec section 3. A user's existing InternVL script keeps its calls and changes only its imports. Unlike
the official `batch_chat`, each question may carry any number of images (`num_patches_list` may hold a
list of tile counts per question).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .checkpoint.loader import load_model
from .engine.engine import Engine
from .engine.sampling import SamplingParams
from .errors import ImageTokenMismatchError
from .models.internvl import InternVL
from .models.region_text import cosine, phrase_embeddings
from .processing.prompt import IMG_CONTEXT_TOKEN, build_query, tokenize_query
from .processing.templates import get_template, stop_strings, without_thinking
from .processing.tokenizer import Tokenizer


class InternVLChatModel(InternVL):
    """`InternVL` plus the official `chat` / `batch_chat` methods."""

    system_message: str | None = None  # set to override config.system_message / the template's own
    enable_thinking: bool = True  # False switches a thinking template (Intern-S1) to answering directly
    vir: str = "auto"  # Flash checkpoints: "auto" routes as the config says, "off" / "always" override it

    def _template(self):
        template = get_template(self.config.template)
        return template if self.enable_thinking or not template.thinking else without_thinking(template)

    def _stop(self) -> str:
        """The token that ends a reply (the official chat() stops on the template separator)."""
        return stop_strings(self._template())[0]

    def _system(self) -> str | None:
        return self.system_message if self.system_message is not None else self.config.system_message

    def _engine(self, tokenizer: Tokenizer, prompts: list[list[int]], params: SamplingParams) -> Engine:
        """An engine sized for these prompts; like the official chat(), it stops at the template separator."""
        return Engine(self, decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                      max_batch=min(len(prompts), 8), eos_token_ids=[tokenizer.convert_tokens_to_ids(self._stop())],
                      max_len=max(len(p) for p in prompts) + max(params.max_new_tokens, 1), vir=self.vir)

    def _run(self, tokenizer: Tokenizer, prompts: list[list[int]], pixel_values: list[torch.Tensor | None],
             generation_config: dict | None) -> list[str]:
        params = SamplingParams.from_generation_config(generation_config)
        seqs = self._engine(tokenizer, prompts, params).generate([(p, pv, params) for p, pv in zip(prompts, pixel_values)])
        return [self._answer(tokenizer, s.output_ids) for s in seqs]

    def _prompt(self, tokenizer: Tokenizer, question: str, history, num_patches_list, special_tokens_in_text: bool
                ) -> list[int]:
        """The prompt's ids; control tokens spelled in the question or history are plain text unless
        `special_tokens_in_text` (the official chat() reads them as control tokens)."""
        return tokenize_query(tokenizer, self._template(), question, history, num_patches_list, self.num_image_token,
                              self._system(), special_tokens_in_text=special_tokens_in_text)

    def stream_chat(self, tokenizer: Tokenizer, pixel_values: torch.Tensor | None, question: str,
                    generation_config: dict | None = None, history: list[tuple[str, str]] | None = None,
                    num_patches_list: list[int] | None = None, *, special_tokens_in_text: bool = False
                    ) -> Iterator[str]:
        """Like `chat()`, but yields the answer as it is generated (chunks join to the full text)."""
        self._bind(tokenizer)
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        params = SamplingParams.from_generation_config(generation_config)
        prompt = self._prompt(tokenizer, question, history, num_patches_list, special_tokens_in_text)
        yield from self._engine(tokenizer, [prompt], params).stream(prompt, pixel_values, params)

    def _bind(self, tokenizer: Tokenizer) -> None:
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)

    def _answer(self, tokenizer: Tokenizer, ids: list[int]) -> str:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return text.split(self._stop())[0].strip()

    def chat(self, tokenizer: Tokenizer, pixel_values: torch.Tensor | None, question: str,
             generation_config: dict | None = None, history: list[tuple[str, str]] | None = None,
             return_history: bool = False, num_patches_list: list[int] | None = None,
             verbose: bool = False, *, special_tokens_in_text: bool = False
             ) -> str | tuple[str, list[tuple[str, str]]]:
        """Answer `question` about the tiles in `pixel_values` (N, 3, S, S), optionally continuing `history`.

        Control tokens spelled in `question` or `history` (`<|im_start|>`, ...) are tokenized as plain text,
        so text cannot forge a turn; `special_tokens_in_text=True` reads them as control tokens, as the
        official chat() does. Without them in the text both give the same ids.
        """
        self._bind(tokenizer)
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and pixel_values.shape[0] != sum(num_patches_list):
            raise ImageTokenMismatchError(f"pixel_values has {pixel_values.shape[0]} tiles but num_patches_list "
                                          f"sums to {sum(num_patches_list)}")
        query, recorded = build_query(self._template(), question, history, num_patches_list,
                                      self.num_image_token, self._system(), return_question=True)
        prompt = self._prompt(tokenizer, question, history, num_patches_list, special_tokens_in_text)
        (response,) = self._run(tokenizer, [prompt], [pixel_values], generation_config)
        if verbose:
            print(query.replace(IMG_CONTEXT_TOKEN, "").replace("<img></img>", "<image>"), response)
        history = list(history or []) + [(recorded, response)]
        return (response, history) if return_history else response

    def batch_chat(self, tokenizer: Tokenizer, pixel_values: torch.Tensor | None, questions: list[str],
                   generation_config: dict | None = None, num_patches_list: list | None = None,
                   history: None = None, return_history: bool = False, image_counts: list | None = None,
                   *, special_tokens_in_text: bool = False) -> list[str]:
        """Answer several questions in one left-padded batch.

        `num_patches_list[i]` is the tile count of question i's image, or a list of tile counts when the
        question has several images (an extension over the official one-image-per-question limit).
        """
        if history is not None or return_history:
            raise NotImplementedError("batch_chat does not keep history; call chat() per conversation")
        self._bind(tokenizer)
        num_patches_list = image_counts if num_patches_list is None else num_patches_list
        if num_patches_list is None:
            num_patches_list = [[] for _ in questions]
        if len(num_patches_list) != len(questions):
            raise ImageTokenMismatchError(f"{len(questions)} questions but {len(num_patches_list)} "
                                          "num_patches_list entries")
        per_question = [[n] if isinstance(n, int) else list(n) for n in num_patches_list]
        total = sum(sum(p) for p in per_question)
        if pixel_values is not None and pixel_values.shape[0] != total:
            raise ImageTokenMismatchError(f"pixel_values has {pixel_values.shape[0]} tiles but num_patches_list "
                                          f"sums to {total}")
        prompts = [self._prompt(tokenizer, q, None, p if pixel_values is not None else [], special_tokens_in_text)
                   for q, p in zip(questions, per_question)]
        tiles = [sum(p) for p in per_question]
        starts = [sum(tiles[:i]) for i in range(len(tiles))]
        images = [pixel_values[a:a + n] if pixel_values is not None and n else None for a, n in zip(starts, tiles)]
        return self._run(tokenizer, prompts, images, generation_config)

    # Image-text matching, as InternVL-C offers it: meaningful for models whose tower was pre-trained with
    # region-text alignment (`internvl train --stage 0`, the shipped tiny model), where the image token that
    # holds an object's center points at the words naming it.
    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles (N, 3, S, S) -> unit-norm image tokens (N, tokens per tile, D), one per region of a tile."""
        return F.normalize(self.extract_feature(pixel_values).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
        """Phrases -> unit-norm embeddings (len(texts), D): the mean of their token embeddings, each phrase
        encoded as a mid-sentence word (leading space), as stage 0 trains them."""
        encoded = [tokenizer.encode(" " + t) or [tokenizer.pad_token_id] for t in texts]
        ids = torch.full((len(texts), max(len(e) for e in encoded)), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, :len(e)], mask[i, :len(e)] = torch.tensor(e), True
        device = self.language_model.embed_tokens.weight.device
        return F.normalize(phrase_embeddings(self.language_model.embed_tokens, ids.to(device), mask.to(device))
                           .float(), dim=-1)

    @torch.no_grad()
    def similarity(self, tokenizer: Tokenizer, pixel_values: torch.Tensor, texts: list[str],
                   num_patches_list: list[int] | None = None) -> torch.Tensor:
        """(images, texts): for each image (its tiles per `num_patches_list`; one image when None), the best
        cosine between a phrase and any of the image's tokens, so "red circle" scores high where one is."""
        counts = num_patches_list or [pixel_values.shape[0]]
        if sum(counts) != pixel_values.shape[0]:
            raise ImageTokenMismatchError(f"pixel_values has {pixel_values.shape[0]} tiles but num_patches_list "
                                          f"sums to {sum(counts)}")
        sims = cosine(self.encode_image(pixel_values), self.encode_text(tokenizer, texts))  # (N, T, P)
        return torch.stack([part.amax(dim=(0, 1)) for part in sims.split(counts)])

    # ---- as a process reward model (VisualPRM); the work is in internvl.tts.prm ----
    def score_steps(self, tokenizer: Tokenizer, question: str, response_list: list[str],
                    pixel_values: torch.Tensor | None = None, num_patches_list: list[int] | None = None,
                    max_steps: int | None = None, **kw) -> list[list[float]]:
        """Each response's step scores, P('+') per step (see `internvl.tts.prm.score_steps`)."""
        from .tts.prm import score_steps
        return score_steps(self, tokenizer, question, response_list, pixel_values, num_patches_list, max_steps, **kw)

    def select_best_response(self, tokenizer: Tokenizer, question: str, response_list: list[str],
                             pixel_values: torch.Tensor | None, num_patches_list: list[int] | None = None,
                             max_steps: int | None = None, **kw) -> list[str]:
        """`response_list` sorted best first by mean step score, ties in input order (VisualPRM's method)."""
        from .tts.prm import select_best_response
        return select_best_response(self, tokenizer, question, response_list, pixel_values, num_patches_list,
                                    max_steps, **kw)


def from_pretrained(path_or_repo: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu", parts: tuple[str, ...] | None = None
                    ) -> tuple[InternVLChatModel, Tokenizer]:
    """Load a checkpoint (official or -hf layout; local directory or Hub repo id) -> (model, tokenizer).
    `parts`: load only these top-level modules (see `checkpoint.loader.load_model`)."""
    model, directory, _ = load_model(path_or_repo, dtype=dtype, device=device, cls=InternVLChatModel, parts=parts)
    tokenizer = Tokenizer.from_pretrained(directory)
    model._bind(tokenizer)
    if model.config.image_token_id is None:
        model.config = model.config.replace(image_token_id=model.img_context_token_id)
    return model, tokenizer


class ChatSession:
    """A multi-turn conversation with images, for the CLI: images added between questions attach to the
    next question (`Image-k: <image>` lines when several), history and all images so far are kept."""

    def __init__(self, model: InternVLChatModel, tokenizer: Tokenizer, generation_config: dict,
                 max_tiles: int | None = None, special_tokens_in_text: bool = False) -> None:
        self.model, self.tokenizer, self.generation_config = model, tokenizer, generation_config
        self.max_tiles = max_tiles or model.config.max_dynamic_patch
        self.special_tokens_in_text = special_tokens_in_text
        self.reset()

    def reset(self) -> None:
        self.history: list[tuple[str, str]] = []
        self.tiles: list[torch.Tensor] = []  # every image of the conversation, in order
        self.pending: list[str] = []  # placeholder lines for images not asked about yet

    @property
    def pending_images(self) -> int:
        return len(self.pending)

    def add_image(self, path: str) -> None:
        from .processing.image import load_image
        tiles = load_image(path, input_size=self.model.config.image_size, max_num=self.max_tiles)
        self.tiles.append(tiles)
        self.pending.append("<image>")

    def add_video(self, path: str, num_frames: int) -> None:
        from .processing.video import load_video
        pixels, per_frame = load_video(path, input_size=self.model.config.image_size, num_segments=num_frames)
        start = 0
        for n in per_frame:
            self.tiles.append(pixels[start:start + n])
            start += n
        self.pending += [f"Frame-{i + 1}: <image>" for i in range(len(per_frame))]

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer to `question` (with the pending images), then record the turn."""
        if len(self.pending) > 1 and all(p == "<image>" for p in self.pending):
            self.pending = [f"Image-{i + 1}: <image>" for i in range(len(self.pending))]
        if self.pending:
            question = "\n".join(self.pending) + "\n" + question
        self.pending = []
        pixel_values = torch.cat(self.tiles) if self.tiles else None
        answer = []
        for chunk in self.model.stream_chat(self.tokenizer, pixel_values, question, self.generation_config,
                                            history=self.history, num_patches_list=[t.shape[0] for t in self.tiles],
                                            special_tokens_in_text=self.special_tokens_in_text):
            answer.append(chunk)
            yield chunk
        self.history.append((question, "".join(answer).strip()))
