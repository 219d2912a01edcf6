"""A KV cache with one slot per running request, grown on demand (no padding offsets, no per-step allocation).

Shape per layer: (slots, kv_heads, capacity, head_dim). A request owns one slot for its lifetime; its keys
start at position 0 of the slot, so positions never need padding offsets and a finished request's slot is
reused by the next one at once. The length axis starts small and doubles when a step needs more (up to
`max_len`), so memory follows the longest live request instead of the worst case. `StepView` adapts the
cache to what the decoder asks of it in one forward call: write this step's keys/values at each row's
positions, return the keys/values attention must see.
"""

from __future__ import annotations

import torch

INITIAL_CAPACITY = 256


class KVCache:
    def __init__(self, num_layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.max_len = max_len
        self.slots = slots
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.lengths = [0] * slots  # tokens stored per slot
        self.free = list(range(slots))[::-1]

    def allocate(self) -> int:
        slot = self.free.pop()
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.free.append(slot)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def reserve(self, length: int) -> None:
        """Make room for `length` tokens per slot: double the capacity (copying what is stored) until it fits."""
        if length <= self.capacity:
            return
        new = min(self.max_len, max(length, INITIAL_CAPACITY, 2 * self.capacity))
        shape = (self.slots, self.kv_heads, new, self.head_dim)
        for cache in (self.k, self.v):
            for i in range(self.num_layers):
                grown = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if self.capacity:
                    grown[:, :, :self.capacity] = cache[i]
                if i < len(cache):
                    cache[i] = grown
                else:
                    cache.append(grown)
        self.capacity = new

    def step(self, slots: list[int], new_tokens: int) -> StepView:
        """A view for one forward call that appends `new_tokens` to each of `slots` (all must fit)."""
        starts = [self.lengths[s] for s in slots]
        if len(set(starts)) > 1 and new_tokens != 1:
            raise ValueError("slots at different lengths can only advance one token at a time")
        return self._view(slots, starts, new_tokens, [st + new_tokens for st in starts])

    def prefill(self, slots: list[int], lengths: list[int]) -> StepView:
        """A view for prompts of different `lengths` into empty `slots`, right-padded to the longest.

        Rows attend causally, so no real token sees the padding; each slot then records only its own length,
        and the padding's keys (beyond it) are overwritten by that row's next tokens before anyone sees them.
        """
        if any(self.lengths[s] for s in slots):
            raise ValueError("prefill needs empty slots")
        return self._view(slots, [0] * len(slots), max(lengths), list(lengths))

    def _view(self, slots: list[int], starts: list[int], new_tokens: int, ends: list[int]) -> StepView:
        if max(starts) + new_tokens > self.max_len:
            raise ValueError(f"cache slot full: {max(starts)} + {new_tokens} > {self.max_len}")
        self.reserve(max(starts) + new_tokens)
        for s, end in zip(slots, ends):
            self.lengths[s] = end
        return StepView(self, slots, starts, new_tokens)


class StepView:
    """Implements the decoder's `update(layer, k, v)` for one step over a set of slots."""

    def __init__(self, cache: KVCache, slots: list[int], starts: list[int], new_tokens: int) -> None:
        self.cache, self.new_tokens = cache, new_tokens
        device = cache.device
        self.width = max(starts) + new_tokens  # keys attention must cover
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        self.rows = slice(slots[0], slots[0] + len(slots)) if contiguous else torch.tensor(slots, device=device)
        self.slot_index = torch.tensor(slots, device=device)
        self.starts = torch.tensor(starts, device=device)
        self.same_start = len(set(starts)) == 1

    def positions(self) -> torch.Tensor:
        """RoPE positions of the new tokens, (B, T)."""
        return self.starts[:, None] + torch.arange(self.new_tokens, device=self.starts.device)[None]

    def mask(self) -> torch.Tensor | None:
        """Boolean (B, 1, T, width) mask: each row sees its own past and, causally, its new tokens."""
        if self.same_start and (self.new_tokens == 1 or int(self.starts[0]) == 0):
            return None  # one new token sees every cached key; a fresh prefill is plain causal
        key = torch.arange(self.width, device=self.starts.device)
        query = self.positions()  # (B, T)
        return (key[None, None, :] <= query[:, :, None])[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ck, cv = self.cache.k[layer], self.cache.v[layer]
        if self.same_start:
            s = int(self.starts[0])
            ck[self.rows, :, s:s + self.new_tokens] = k
            cv[self.rows, :, s:s + self.new_tokens] = v
        else:  # ragged decode: one new token per row at its own position
            pos = self.starts
            ck[self.slot_index, :, pos] = k[:, :, 0]
            cv[self.slot_index, :, pos] = v[:, :, 0]
        return ck[self.rows, :, :self.width], cv[self.rows, :, :self.width]
