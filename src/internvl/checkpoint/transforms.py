"""Tensor transforms between our plain projections and the fused or stacked tensors of checkpoints.

Each transform is a pair: `join` turns the checkpoint's tensors into ours, `split` turns ours back, and
`split(join(x)) == x` bit for bit (the round-trip tests rely on it). Spec section 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tensors = Sequence[torch.Tensor]
Fn = Callable[[Tensors], list[torch.Tensor]]


def identity() -> tuple[Fn, Fn]:
    return list, list


def concat_rows(sizes: Sequence[int] | None = None) -> tuple[Fn, Fn]:
    """Several checkpoint tensors <-> one of ours, concatenated along dim 0 (vision q/k/v -> qkv)."""
    def join(xs: Tensors) -> list[torch.Tensor]:
        return [torch.cat(list(xs), dim=0)]

    def split(xs: Tensors) -> list[torch.Tensor]:
        (x,) = xs
        parts = sizes or [x.shape[0] // 3] * 3
        return [p.contiguous() for p in torch.split(x, list(parts), dim=0)]
    return join, split


def split_rows(sizes: Sequence[int]) -> tuple[Fn, Fn]:
    """One fused checkpoint tensor <-> several of ours (Phi-3 qkv_proj, gate_up_proj)."""
    join_c, split_c = concat_rows(sizes)
    return split_c, join_c


def internlm2_wqkv(num_kv_heads: int, groups: int, head_dim: int) -> tuple[Fn, Fn]:
    """InternLM2 packs q/k/v per KV group: rows are (kv_head, [q_0..q_{g-1}, k, v], head_dim)."""
    def join(xs: Tensors) -> list[torch.Tensor]:
        (w,) = xs
        rest = w.shape[1:]
        w = w.reshape(num_kv_heads, groups + 2, head_dim, *rest)
        q = w[:, :groups].reshape(num_kv_heads * groups * head_dim, *rest)
        k = w[:, groups].reshape(num_kv_heads * head_dim, *rest)
        v = w[:, groups + 1].reshape(num_kv_heads * head_dim, *rest)
        return [q.contiguous(), k.contiguous(), v.contiguous()]

    def split(xs: Tensors) -> list[torch.Tensor]:
        q, k, v = xs
        rest = q.shape[1:]
        q = q.reshape(num_kv_heads, groups, head_dim, *rest)
        k = k.reshape(num_kv_heads, 1, head_dim, *rest)
        v = v.reshape(num_kv_heads, 1, head_dim, *rest)
        return [torch.cat([q, k, v], dim=1).reshape(-1, *rest).contiguous()]
    return join, split


def stack_experts(pairs: bool) -> tuple[Fn, Fn]:
    """Per-expert tensors <-> one stacked (E, ...) tensor; with `pairs`, [gate_e, up_e] rows are fused first."""
    def join(xs: Tensors) -> list[torch.Tensor]:
        if pairs:
            xs = [torch.cat([xs[j], xs[j + 1]], dim=0) for j in range(0, len(xs), 2)]
        return [torch.stack(list(xs))]

    def split(xs: Tensors) -> list[torch.Tensor]:
        (x,) = xs
        out = []
        for e in x.unbind(0):
            out += [p.contiguous() for p in e.chunk(2, dim=0)] if pairs else [e.contiguous()]
        return out
    return join, split


# The 16 values of an FP4 (E2M1) code: bit 3 is the sign, bits 0-2 index the magnitudes.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """OCP MXFP4 -> dense, as GPT-OSS checkpoints store their experts.

    blocks (E, R, G, 16) uint8 hold two FP4 codes per byte (low nibble first), 32 values per group; scales
    (E, R, G) uint8 are each group's power of two (E8M0, bias 127). Returns (E, G * 32, R): the checkpoint's
    rows become columns, the `x @ W` layout the dense GPT-OSS tensors have.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not pair up "
                         "(expected blocks (..., G, 16) and scales (..., G))")
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    codes = blocks.to(torch.uint8)
    values = torch.stack([lut[(codes & 0x0F).long()], lut[(codes >> 4).long()]], dim=-1)  # (E, R, G, 16, 2)
    values = values.flatten(-2)  # (E, R, G, 32): low nibble = even index
    # an integer exponent, written in place: a float 2**128 (scale 255) would overflow before the multiply
    torch.ldexp(values, (scales.to(torch.int32) - 127)[..., None], out=values)
    return values.flatten(-2).transpose(1, 2).contiguous()


def mxfp4() -> tuple[Fn, Fn]:
    """MXFP4 `*_blocks` + `*_scales` -> one dense tensor; read-only (checkpoints are written dense)."""
    def join(xs: Tensors) -> list[torch.Tensor]:
        blocks, scales = xs
        return [mxfp4_dequantize(blocks, scales)]

    def split(xs: Tensors) -> list[torch.Tensor]:
        raise NotImplementedError("writing MXFP4 is not supported; checkpoints are saved with dense experts")
    return join, split
