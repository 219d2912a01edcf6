"""`attention`: the one-query (decode) path on CPU in half precision, against a float64 reference."""

import pytest
import torch

from internvl.models.layers import attention


def reference(q, k, v, mask):
    """Plain softmax attention in float64, grouped KV heads expanded (head h reads KV head h // group)."""
    group = q.shape[1] // k.shape[1]
    k, v = (x.double().repeat_interleave(group, 1) for x in (k, v))
    scores = q.double() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_single_query_matches_reference(dtype):
    g = torch.Generator().manual_seed(0)
    b, heads, kv_heads, width, dim = 3, 8, 2, 300, 64
    q = torch.randn(b, heads, 1, dim, generator=g) * 3  # large scores, where rounding them would show
    k = torch.randn(b, kv_heads, width, dim, generator=g)
    v = torch.randn(b, kv_heads, width, dim, generator=g)
    mask = torch.ones(b, 1, 1, width, dtype=torch.bool)
    mask[1, ..., 200:] = False  # ragged batch: row 1 has 200 keys
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    for m in (None, mask):
        out = attention(q, k, v, m)
        assert out.dtype == dtype and out.shape == q.shape
        ref = reference(q, k, v, m)
        # only the output's own rounding: bf16 keeps 8 bits (2^-8 of |out| <= ~3), fp16 11, fp32 24
        tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-5}[dtype]
        assert (out.double() - ref).abs().max().item() < tol


def test_single_query_ignores_masked_keys():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 1, 32, generator=g).bfloat16()
    k = torch.randn(2, 4, 50, 32, generator=g).bfloat16()
    v = torch.randn(2, 4, 50, 32, generator=g).bfloat16()
    mask = torch.ones(2, 1, 1, 50, dtype=torch.bool)
    mask[0, ..., 30:] = False
    before = attention(q, k, v, mask)
    k[0, :, 30:], v[0, :, 30:] = 1e4, -1e4  # what a slot beyond its length may hold
    after = attention(q, k, v, mask)
    assert torch.equal(before, after)
