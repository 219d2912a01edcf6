"""One request in flight: its prompt, images, sampling state, output tokens and incremental text.

Text is detokenized incrementally and emitted only when it is final: never half a UTF-8 character
(the tokenizer shows those as U+FFFD) and never the beginning of what may turn into a stop string.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from .sampling import SamplingParams

_ids = itertools.count()


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    pixel_values: torch.Tensor | None = None  # (tiles, 3, S, S)
    image_features: torch.Tensor | None = None  # filled once, when the request is admitted
    image_tokens: int = 0  # image tokens the LLM read (after the Flash router dropped compressed tiles' slots)
    compressed_tiles: int = 0  # tiles the Flash router compressed
    id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # final text so far (stop strings cut)
    emitted: int = 0  # characters of `text` already handed to the caller
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None  # why, when finish_reason is "error" (this request failed; its batch went on)
    slot: int | None = None
    generator: torch.Generator | None = None
    position_offset: float = 0.0  # V2PE: RoPE position minus cache index for every token after the prompt

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def fail(self, error: str) -> None:
        self.error, self.finish_reason = error, "error"

    def take_delta(self) -> str:
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta

    def append(self, token: int, decode, eos_ids: set[int]) -> None:
        """Add a sampled token; update the safe text and finish on EOS, stop string or length."""
        p = self.params
        if token in eos_ids or token in p.stop_token_ids:
            self.finish_reason = "stop"
            self.text = self._cut(decode(self.output_ids), final=True)
            return
        self.output_ids.append(token)
        full = decode(self.output_ids)
        for stop in p.stop:
            at = full.find(stop, max(0, len(self.text) - len(stop)))
            if at != -1:
                self.text, self.finish_reason = full[:at], "stop"
                return
        if len(self.output_ids) >= p.max_new_tokens:
            self.finish_reason = "length"
            self.text = self._cut(full, final=True)
            return
        self.text = self._cut(full, final=False)

    def _cut(self, full: str, final: bool) -> str:
        if final:
            return full
        end = len(full)
        while end > 0 and full[end - 1] == "\ufffd":  # an unfinished multi-byte character
            end -= 1
        for stop in self.params.stop:  # hold back a tail that could still become a stop string
            for n in range(min(len(stop) - 1, end), 0, -1):
                if full[end - n:end] == stop[:n]:
                    end -= n
                    break
        return full[:max(end, len(self.text))]
