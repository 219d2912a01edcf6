"""The official quick-start API, drop-in: `model.chat(...)`, `model.batch_chat(...)`, `from_pretrained(...)`.

Spec section 3. A user's existing InternVL script keeps its calls and changes only its imports. Unlike
the official `batch_chat`, each question may carry any number of images (`num_patches_list` may hold a
list of tile counts per question).
"""

from __future__ import annotations

import os

import torch

from .checkpoint.loader import load_model
from .errors import ImageTokenMismatchError
from .generation import SamplingConfig, generate
from .models.internvl import InternVL
from .processing.prompt import IMG_CONTEXT_TOKEN, build_query
from .processing.templates import get_template
from .processing.tokenizer import Tokenizer


class InternVLChatModel(InternVL):
    """`InternVL` plus the official `chat` / `batch_chat` methods."""

    system_message: str | None = None  # set to override config.system_message / the template's own

    def _template(self):
        return get_template(self.config.template)

    def _system(self) -> str | None:
        return self.system_message if self.system_message is not None else self.config.system_message

    def _sampling(self, tokenizer: Tokenizer, generation_config: dict | None) -> SamplingConfig:
        cfg = SamplingConfig.from_dict(generation_config)
        # like the official chat(): stop at the template separator token, whatever generation_config says
        sep_id = tokenizer.convert_tokens_to_ids(self._template().sep.strip())
        cfg.eos_token_id = sep_id
        cfg.pad_token_id = tokenizer.pad_token_id
        return cfg

    def _bind(self, tokenizer: Tokenizer) -> None:
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)

    def _answer(self, tokenizer: Tokenizer, ids: torch.Tensor) -> str:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return text.split(self._template().sep.strip())[0].strip()

    def chat(self, tokenizer: Tokenizer, pixel_values: torch.Tensor | None, question: str,
             generation_config: dict | None = None, history: list[tuple[str, str]] | None = None,
             return_history: bool = False, num_patches_list: list[int] | None = None,
             verbose: bool = False) -> str | tuple[str, list[tuple[str, str]]]:
        """Answer `question` about the tiles in `pixel_values` (N, 3, S, S), optionally continuing `history`."""
        self._bind(tokenizer)
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and pixel_values.shape[0] != sum(num_patches_list):
            raise ImageTokenMismatchError(f"pixel_values has {pixel_values.shape[0]} tiles but num_patches_list "
                                          f"sums to {sum(num_patches_list)}")
        query, question = build_query(self._template(), question, history, num_patches_list,
                                      self.num_image_token, self._system())
        inputs = tokenizer(query)
        out = generate(self, inputs["input_ids"], inputs["attention_mask"], pixel_values,
                       self._sampling(tokenizer, generation_config))
        response = self._answer(tokenizer, out[0])
        if verbose:
            print(query.replace(IMG_CONTEXT_TOKEN, "").replace("<img></img>", "<image>"), response)
        history = list(history or []) + [(question, response)]
        return (response, history) if return_history else response

    def batch_chat(self, tokenizer: Tokenizer, pixel_values: torch.Tensor | None, questions: list[str],
                   generation_config: dict | None = None, num_patches_list: list | None = None,
                   history: None = None, return_history: bool = False, image_counts: list | None = None
                   ) -> list[str]:
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
        queries = [build_query(self._template(), q, None, p if pixel_values is not None else [],
                               self.num_image_token, self._system())[0]
                   for q, p in zip(questions, per_question)]
        tokenizer.padding_side = "left"
        inputs = tokenizer(queries)
        out = generate(self, inputs["input_ids"], inputs["attention_mask"], pixel_values,
                       self._sampling(tokenizer, generation_config))
        return [self._answer(tokenizer, row) for row in out]


def from_pretrained(path_or_repo: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> tuple[InternVLChatModel, Tokenizer]:
    """Load a checkpoint (official or -hf layout; local directory or Hub repo id) -> (model, tokenizer)."""
    model, directory, _ = load_model(path_or_repo, dtype=dtype, device=device, cls=InternVLChatModel)
    tokenizer = Tokenizer.from_pretrained(directory)
    model._bind(tokenizer)
    if model.config.image_token_id is None:
        model.config = model.config.replace(image_token_id=model.img_context_token_id)
    return model, tokenizer
