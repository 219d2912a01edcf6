"""Decode-step linear layers through decode.c: weights described once, then one C call per product.

`linear(x, layer)` is what the decoder's projections call. Inside `decode_kernels(rows, dtype, device)` (the
engine's decode step enters it through `runtime.matmul_mode`), on CPU, without autograd, for a layer the
kernels take (`nn.Linear` with fp32/bf16 weights, `quantize.Int8Linear`, or an `nn.Embedding` used as a tied
LM head) and few enough token rows (DENSE_MAX_ROWS, INT8_MAX_ROWS: where the kernel measured faster), it runs
the kernel; everywhere else, and whenever the kernels are unavailable, it is exactly `layer(x)`
(`F.linear(x, embedding.weight)` for the tied head).

The kernel reads the weights where they are, in their own format, and accumulates in fp32; activations and
outputs stay in x's dtype (a bf16 output is rounded once, to nearest even, like torch's). A layer's
description (pointers, fp32 copies of its scales and bias) is cached per module and rebuilt when a
weight is replaced or written in place.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..quantize import Int8Linear
from .build import Mat, library

MAX_ROWS = 8  # one weight pass serves up to 8 activation rows; decode batches are at most max_batch (8)
# Where the kernel runs, by measurement (benchmarks/bench_kernels.py, Zen 4, 2 threads, preliminary): int8 weights
# at every row count (1 row: 0.86-1.34x torch's int8pack GEMV, on par; 8 rows: 1.2-5.7x, torch dequantizes first);
# fp32/bf16 weights at 1 row only (on par with torch's GEMV, both at the read bandwidth). At 8 rows oneDNN's
# bf16 GEMM is on par with the AVX512-BF16 build (0.96-1.2x) and 1.3-1.5x faster than the fp32-FMA builds.
DENSE_MAX_ROWS = 1
INT8_MAX_ROWS = MAX_ROWS
FORMATS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
INT4 = 3
ACTIVATIONS = (torch.float32, torch.bfloat16)
INT4_GROUP = 32

_active: contextvars.ContextVar[bool] = contextvars.ContextVar("internvl_decode_kernels", default=False)


@dataclass
class Weight:
    """A weight matrix as the kernel reads it; holds the tensors its pointers point into."""

    mat: Mat
    tensors: tuple[torch.Tensor | None, ...]
    key: tuple = ()  # what the description was built from: (data_ptr, _version) of each source tensor

    @property
    def n(self) -> int:
        return self.mat.n

    @property
    def k(self) -> int:
        return self.mat.k


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _describe(fmt: int, w: torch.Tensor, k: int, scale=None, gscale=None, bias=None) -> Weight:
    bias = None if bias is None else bias.detach().float().contiguous()
    mat = Mat(fmt=fmt, n=w.shape[0], k=k, w=w.data_ptr(), scale=_ptr(scale), gscale=_ptr(gscale), bias=_ptr(bias))
    return Weight(mat, (w, scale, gscale, bias))


def _check_matrix(w: torch.Tensor, what: str) -> None:
    if w.ndim != 2 or not w.is_contiguous() or w.device.type != "cpu":
        raise ValueError(f"{what} must be a contiguous 2-D CPU tensor, got shape {tuple(w.shape)}, "
                         f"strides {w.stride()}, device {w.device}")


def dense_weight(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Weight:
    """An fp32 or bf16 (n, k) weight (and optional (n,) bias)."""
    _check_matrix(weight, "weight")
    if weight.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"the kernels take fp32 or bf16 weights, not {weight.dtype}")
    return _describe(FORMATS[weight.dtype], weight.detach(), weight.shape[1], bias=bias)


def int8_weight(qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> Weight:
    """An int8 (n, k) weight with one scale per row: w = qweight * scale[:, None]."""
    _check_matrix(qweight, "qweight")
    if qweight.dtype != torch.int8 or scale.shape != (qweight.shape[0],):
        raise ValueError(f"int8 weight needs int8 (n, k) and scales (n,), got {qweight.dtype} "
                         f"{tuple(qweight.shape)} and {tuple(scale.shape)}")
    return _describe(2, qweight.detach(), qweight.shape[1], scale=scale.detach().float().contiguous(), bias=bias)


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) float, k a multiple of 32 -> packed int4 (n, k / 2) uint8 and bf16 group scales (n, k / 32).

    Symmetric per group of 32: scale = max|w| / 7 (in bf16), q = round(w / scale) in [-8, 7], stored as q + 8;
    byte j of a group holds element j (low nibble) and element 16 + j (high nibble)."""
    n, k = weight.shape
    if k % INT4_GROUP:
        raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}, got {k}")
    g = weight.detach().float().reshape(n, k // INT4_GROUP, INT4_GROUP)
    scale = (g.abs().amax(-1) / 7).to(torch.bfloat16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (torch.round(g / scale.float()[..., None]).clamp_(-8, 7) + 8).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    return packed.reshape(n, k // 2).contiguous(), scale.contiguous()


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 (n, k) weight that `quantize_int4`'s output stands for (the reference for tests)."""
    n = packed.shape[0]
    g = packed.reshape(n, -1, 16)
    q = torch.cat([g & 0x0F, g >> 4], dim=-1).float() - 8
    return (q * scale.float()[..., None]).reshape(n, -1)


def int4_weight(packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> Weight:
    """A `quantize_int4` weight: packed (n, k / 2) uint8 and bf16 group scales (n, k / 32)."""
    _check_matrix(packed, "packed int4 weight")
    n, k = packed.shape[0], packed.shape[1] * 2
    if packed.dtype != torch.uint8 or k % INT4_GROUP or scale.dtype != torch.bfloat16 or \
            scale.shape != (n, k // INT4_GROUP):
        raise ValueError(f"int4 weight needs uint8 (n, k/2) with k % {INT4_GROUP} == 0 and bf16 scales "
                         f"(n, k/{INT4_GROUP}); got {packed.dtype} {tuple(packed.shape)}, {scale.dtype} "
                         f"{tuple(scale.shape)}")
    return _describe(INT4, packed.detach(), k, gscale=scale.detach().contiguous(), bias=bias)


def matmul(x: torch.Tensor, w: Weight, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """x (..., k) fp32 or bf16 on CPU -> x W^T (* scale) + bias, (..., n) in x's dtype. Any number of rows
    works (passes of 8); the kernel is meant for decode steps. Runs `lib` (default: `library()`, which
    callers check first)."""
    lib = lib or library()
    if lib is None:
        raise RuntimeError("the decode kernels are not available")
    if x.dtype not in ACTIVATIONS or x.device.type != "cpu":
        raise TypeError(f"the kernels take fp32 or bf16 CPU activations, not {x.dtype} on {x.device}")
    if x.shape[-1] != w.k:
        raise ValueError(f"activations have {x.shape[-1]} features, the weight takes {w.k}")
    x2 = x.reshape(-1, w.k)
    rows = x2.shape[0]
    if x2.stride(-1) != 1 or (rows > 1 and x2.stride(0) < w.k):
        x2 = x2.contiguous()
    y = torch.empty(rows, w.n, dtype=x.dtype)
    if rows and w.n:
        bf16 = int(x.dtype == torch.bfloat16)
        ldx = x2.stride(0) if rows > 1 else w.k
        rc = lib.iv_gemv(ctypes.byref(w.mat), rows, x2.data_ptr(), bf16, ldx, y.data_ptr(), bf16, w.n,
                         torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"iv_gemv refused a ({rows}, {w.k}) x ({w.n}, {w.k}) product")
    return y.reshape(*x.shape[:-1], w.n)


# ---------------------------------------------------------------- the decoder's hook

_weights: weakref.WeakKeyDictionary[nn.Module, Weight] = weakref.WeakKeyDictionary()


def _key(*tensors: torch.Tensor | None) -> tuple:
    return tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)


def _weight_of(layer: nn.Module, x: torch.Tensor) -> Weight | None:
    """The kernel's view of `layer` for activations like `x`, or None where the kernel does not apply."""
    kind = type(layer)
    if kind is nn.Linear or kind is nn.Embedding:
        w, bias = layer.weight, getattr(layer, "bias", None)
        if w.dtype != x.dtype or w.device.type != "cpu" or not w.is_contiguous():
            return None
        key, make = _key(w, bias), lambda: dense_weight(w, bias)
    elif kind is Int8Linear:
        w, bias = layer.qweight, layer.bias
        if w.device.type != "cpu" or not w.is_contiguous():
            return None
        key, make = _key(w, layer.scale, bias), lambda: int8_weight(w, layer.scale, bias)
    else:
        return None
    cached = _weights.get(layer)
    if cached is None or cached.key != key:
        cached = make()
        cached.key = key
        _weights[layer] = cached
    return cached


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """`layer(x)`, by the decode kernel where it applies (see the module docstring). An `nn.Embedding` stands
    for a tied LM head: `F.linear(x, layer.weight)`."""
    if _active.get() and x.dtype in ACTIVATIONS and x.device.type == "cpu" and not torch.is_grad_enabled():
        limit = INT8_MAX_ROWS if type(layer) is Int8Linear else DENSE_MAX_ROWS
        if x.numel() // max(x.shape[-1], 1) <= limit and (w := _weight_of(layer, x)) is not None:
            return matmul(x, w)
    return F.linear(x, layer.weight) if isinstance(layer, nn.Embedding) else layer(x)


def available() -> bool:
    return library() is not None


@contextlib.contextmanager
def decode_kernels(rows: int, dtype: torch.dtype, device: torch.device | str) -> Iterator[bool]:
    """Route `linear` through the kernels for a forward over `rows` token rows, when they apply; yields
    whether they do. Per thread (a context variable): a vision encoder in another thread is unaffected."""
    on = (rows <= MAX_ROWS and dtype in ACTIVATIONS and torch.device(device).type == "cpu"
          and available())
    token = _active.set(on)
    try:
        yield on
    finally:
        _active.reset(token)
