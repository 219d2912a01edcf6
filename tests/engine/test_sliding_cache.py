"""The KV cache's sliding-window rings: only a row's last `window` real positions are kept (padding never
enters), masks follow positions, a reused slot starts empty, and the memory never grows."""

from __future__ import annotations

import torch

from internvl.engine.kv_cache import KVCache

W = 4


def kv(b: int, t: int, start: float = 0.0) -> torch.Tensor:
    """(b, 1 head, t, 1) keys whose value is their position (+ 100 * row), to read back what the ring holds."""
    return (torch.arange(t, dtype=torch.float32)[None, :] + start + 100 * torch.arange(b)[:, None])[:, None, :, None]


def test_prefill_keeps_each_rows_last_window_positions():
    cache = KVCache(2, 2, 1, 64, 1, torch.float32, windows=[W, None])
    a, b = cache.allocate(), cache.allocate()
    view = cache.prefill([a, b], [6, 2])  # right-padded to 6: row b's positions 2..5 are padding
    k = kv(2, 6)
    keys, _, mask = view.update_window(0, k, k, W)
    assert mask is None and keys is k  # a fresh prefill attends over its own keys (causal, windowed by index)
    assert sorted(cache.ring_pos[0][a].tolist()) == [2, 3, 4, 5]
    assert sorted(cache.ring_pos[0][b].tolist()) == [-1, -1, 0, 1]  # padding never enters
    held = {int(p): float(v) for p, v in zip(cache.ring_pos[0][a], cache.ring_k[0][a, 0, :, 0])}
    assert held == {2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0}


def test_ragged_decode_masks_by_position_and_window():
    cache = KVCache(1, 2, 1, 64, 1, torch.float32, windows=[W])
    a, b = cache.allocate(), cache.allocate()
    k = kv(2, 6)
    cache.prefill([a, b], [6, 2]).update_window(0, k, k, W)
    view = cache.step([a, b], 1)  # row a at position 6, row b at position 2
    new = torch.tensor([[6.0], [102.0]])[:, None, :, None]
    keys, _, mask = view.update_window(0, new, new, W)
    assert keys.shape == (2, 1, W + 1, 1) and mask.shape == (2, 1, 1, W + 1)
    seen = [sorted(float(x) % 100 for x, m in zip(keys[r, 0, :, 0], mask[r, 0, 0]) if m) for r in range(2)]
    assert seen == [[3.0, 4.0, 5.0, 6.0], [0.0, 1.0, 2.0]]  # the last W positions (itself included); no stale ones
    assert sorted(cache.ring_pos[0][a].tolist()) == [3, 4, 5, 6]
    assert sorted(cache.ring_pos[0][b].tolist()) == [-1, 0, 1, 2]


def test_reused_slot_starts_empty_and_memory_is_fixed():
    cache = KVCache(2, 1, 1, 1024, 1, torch.float32, windows=[W, None])
    slot = cache.allocate()
    k = kv(1, 10)
    cache.prefill([slot], [10]).update_window(0, k, k, W)
    ring_bytes = cache.ring_k[0].numel() * 4 * 2
    for _ in range(300):
        view = cache.step([slot], 1)
        view.update_window(0, k[:, :, :1], k[:, :, :1], W)
        view.update(1, k[:, :, :1], k[:, :, :1])
    assert cache.ring_k[0].shape[2] == W and cache.k[0] is None and cache.k[1].shape[2] >= 310
    assert cache.nbytes() == ring_bytes + 2 * cache.k[1].numel() * 4
    cache.release(slot)
    assert cache.allocate() == slot and (cache.ring_pos[0][slot] == -1).all()
