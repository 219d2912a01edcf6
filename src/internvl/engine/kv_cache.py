"""A KV cache with one slot per running request, grown on demand (no padding offsets, no per-step allocation).

Shape per layer: (slots, kv_heads, capacity, head_dim). A request owns one slot for its lifetime; its keys
start at position 0 of the slot, so positions never need padding offsets and a finished request's slot is
reused by the next one at once. The length axis starts small and doubles when a step needs more (up to
`max_len`), so memory follows the longest live request instead of the worst case. `StepView` adapts the
cache to what the decoder asks of it in one forward call: write this step's keys/values at each row's
positions, return the keys/values attention must see.

Sliding-window layers (GPT-OSS: a query sees its last `window` positions) keep a fixed ring of `window`
positions per slot instead: position p lives at index p % window and `ring_pos` records which position each
entry holds, so their memory never grows with the sequence and nothing beyond the window is kept.
"""

from __future__ import annotations

import torch

INITIAL_CAPACITY = 256


class KVCache:
    def __init__(self, num_layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu",
                 windows: list[int | None] | None = None) -> None:
        """`windows[i]`: layer i's sliding window (a ring of that many positions), None for a full layer."""
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.max_len = max_len
        self.slots = slots
        self.capacity = 0
        self.windows = list(windows) if windows is not None else [None] * num_layers
        if len(self.windows) != num_layers:
            raise ValueError(f"{len(self.windows)} windows for {num_layers} layers")
        self.full_layers = [i for i, w in enumerate(self.windows) if w is None]
        self.k: list[torch.Tensor | None] = [None] * num_layers  # full layers: (slots, kv_heads, capacity, D)
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.ring_k: dict[int, torch.Tensor] = {}  # sliding layers: (slots, kv_heads, window, D)
        self.ring_v: dict[int, torch.Tensor] = {}
        self.ring_pos: dict[int, torch.Tensor] = {}  # (slots, window) long: position held, -1 = empty
        for i, w in enumerate(self.windows):
            if w is not None:
                if w < 1:
                    raise ValueError(f"layer {i}: window must be >= 1, got {w}")
                self.ring_k[i] = torch.zeros(slots, kv_heads, w, head_dim, dtype=dtype, device=self.device)
                self.ring_v[i] = torch.zeros_like(self.ring_k[i])
                self.ring_pos[i] = torch.full((slots, w), -1, dtype=torch.long, device=self.device)
        self.lengths = [0] * slots  # tokens stored per slot
        self.free = list(range(slots))[::-1]

    def allocate(self) -> int:
        slot = self.free.pop()
        self.lengths[slot] = 0
        for pos in self.ring_pos.values():
            pos[slot] = -1
        return slot

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.free.append(slot)

    def nbytes(self) -> int:
        tensors = [t for t in self.k + self.v if t is not None] + list(self.ring_k.values()) + list(self.ring_v.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def reserve(self, length: int) -> None:
        """Make room for `length` tokens per slot in the full layers: double the capacity (copying what is
        stored) until it fits. Sliding layers' rings never grow."""
        if length <= self.capacity:
            return
        new = min(self.max_len, max(length, INITIAL_CAPACITY, 2 * self.capacity))
        shape = (self.slots, self.kv_heads, new, self.head_dim)
        for cache in (self.k, self.v):
            for i in self.full_layers:
                grown = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if self.capacity:
                    grown[:, :, :self.capacity] = cache[i]
                cache[i] = grown
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
        return StepView(self, slots, starts, new_tokens, ends)


class StepView:
    """Implements the decoder's `update(layer, k, v)` for one step over a set of slots."""

    def __init__(self, cache: KVCache, slots: list[int], starts: list[int], new_tokens: int,
                 ends: list[int] | None = None) -> None:
        self.cache, self.new_tokens = cache, new_tokens
        self.slots, self.start_list = slots, starts
        self.ends = ends if ends is not None else [st + new_tokens for st in starts]  # real end per row
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

    def update_window(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Sliding layer: keys/values of the ring (the slot's last `window` positions) and this step, with their
        mask by position (causal, within the window); then this step's real positions enter the ring.

        A fresh prefill (every row starts at 0) attends over this step's keys alone (mask None: the decoder
        applies causality and the window by index)."""
        cache = self.cache
        rk, rv, rpos = cache.ring_k[layer], cache.ring_v[layer], cache.ring_pos[layer]
        size = rk.shape[2]
        fresh = self.same_start and int(self.starts[0]) == 0
        if fresh:
            keys, values, mask = k, v, None
        else:
            device = k.device
            steps = torch.arange(self.new_tokens, device=device)
            q_pos = self.starts[:, None] + steps[None]  # (B, T)
            key_pos = torch.cat([rpos[self.rows], q_pos], dim=1)  # (B, window + T)
            keys = torch.cat([rk[self.rows], k], dim=2)
            values = torch.cat([rv[self.rows], v], dim=2)
            kp, qp = key_pos[:, None, :], q_pos[:, :, None]
            mask = ((kp >= 0) & (kp <= qp) & (kp > qp - window))[:, None]  # (B, 1, T, window + T)
        # remember each row's last `size` real positions (padding beyond a row's end never enters)
        if self.new_tokens == 1:
            dest = self.starts % size
            rk[self.slot_index, :, dest] = k[:, :, 0]
            rv[self.slot_index, :, dest] = v[:, :, 0]
            rpos[self.slot_index, dest] = self.starts
        else:
            for row, (slot, start, end) in enumerate(zip(self.slots, self.start_list, self.ends)):
                first = max(start, end - size)
                if first >= end:
                    continue
                positions = torch.arange(first, end, device=k.device)
                dest = positions % size
                rk[slot][:, dest] = k[row, :, first - start:end - start]
                rv[slot][:, dest] = v[row, :, first - start:end - start]
                rpos[slot, dest] = positions
        return keys, values, mask
