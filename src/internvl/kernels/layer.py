"""The decoder's fused decode step: each layer of a step that adds one token per row runs as one call to
layer.c instead of ~60 small PyTorch ops (`decode_layers`, called by `models.decoder.Decoder`).

It applies inside `decode_kernels` (the engine's decode steps), without autograd, to LLaMA-style layers whose
products the kernels take (`gemv.linear`'s formats) with norms in the activation dtype, a SwiGLU feed-forward,
full attention (no sliding window, no sinks, no MoE) and an engine `StepView` cache in the activation dtype.
Anything else returns None and the decoder runs its modules. Forward hooks on a layer's modules also keep the
module path, so whatever a hook observes still happens.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from . import gemv
from .build import Layer, cpu_flags, library

ENABLED = True  # False: the module path everywhere (for comparisons)
# Rows a fused step takes, by weight format; None: by the build. int8: where gemv runs its kernel (all). Dense:
# up to 8 rows for bf16 on the AVX512-BF16 build, whose 8-row bf16 products match oneDNN's (batch-8 decode then
# gains the whole step's overhead: 71 against 61 tok/s, InternVL3-1B, Zen 4), unless the CPU has AMX, where
# oneDNN's 8-row products run on the tile unit (batch 8: 72.8 fused against transformers' 90.7 tok/s on a
# Sapphire Rapids Xeon); else one, like gemv (the fp32-FMA builds' 8-row products are 1.3-1.5x slower).
MAX_ROWS: dict[str, int | None] = {"int8": gemv.INT8_MAX_ROWS, "dense": None}


@functools.cache
def _has_amx() -> bool:
    return "amx_bf16" in cpu_flags()  # read once: /proc/cpuinfo is long on big machines


def max_rows(int8: bool, dtype: torch.dtype) -> int:
    """The most rows a fused step takes for layers with (any) int8 weights or dense ones, activations `dtype`."""
    limit = MAX_ROWS["int8" if int8 else "dense"]
    if limit is None:
        native = (dtype == torch.bfloat16 and library() is not None and library().iv_isa() == b"avx512bf16"
                  and not _has_amx())
        limit = gemv.MAX_ROWS if native else gemv.DENSE_MAX_ROWS
    return min(limit, gemv.MAX_ROWS)


@dataclass
class _Plan:
    layer: Layer
    key: tuple  # what it was built from: the Weights' ids and the norm weights' (data_ptr, _version)
    int8: bool  # any int8 weights (they take more rows, see MAX_ROWS)
    weights: list  # the Weights `layer` points into (kept alive, so their ids stay theirs)


_plans: weakref.WeakKeyDictionary[nn.Module, _Plan] = weakref.WeakKeyDictionary()


def _norm_ok(norm: nn.Module | None, x: torch.Tensor, eps: float) -> bool:
    w = getattr(norm, "weight", None)
    return (w is not None and w.dtype == x.dtype and w.is_contiguous() and w.device.type == "cpu"
            and norm.eps == eps and not norm.weight_in_fp32)


def _plan(block: nn.Module, x: torch.Tensor) -> _Plan | None:
    """The layer.c description of a DecoderLayer for activations like x, or None where it does not apply."""
    from ..models.layers import SwiGLU  # noqa: PLC0415  (models import this package)

    attn, mlp = block.self_attn, block.mlp
    if type(mlp) is not SwiGLU or attn.sinks is not None or attn.window is not None:
        return None
    eps = block.input_layernorm.eps
    norms = [block.input_layernorm, block.post_attention_layernorm]
    if attn.qk_norm:
        norms += [attn.q_norm, attn.k_norm]
    if not all(_norm_ok(n, x, eps) for n in norms):
        return None
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    weights = [gemv._weight_of(m, x) for m in linears]
    if any(w is None for w in weights):
        return None
    key = (*map(id, weights), *gemv._key(*(n.weight for n in norms)))
    plan = _plans.get(block)
    if plan is None or plan.key != key:
        ptrs = [n.weight.data_ptr() for n in norms] + [None, None]
        layer = Layer(*(ctypes.pointer(w.mat) for w in weights), *ptrs[:4], eps, attn.n_heads, attn.n_kv,
                      attn.head_dim, mlp.gate_proj.in_features, mlp.gate_proj.out_features)
        int8 = any(type(m) is not nn.Linear for m in linears)
        plan = _Plan(layer, key, int8, weights)
        _plans[block] = plan
    return plan


def _hooked(block: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in block.modules())


def decode_layers(layers: nn.ModuleList, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  cache) -> torch.Tensor | None:
    """x (B, 1, D) after every layer of a one-token decode step, through layer.c; None where it does not apply
    (see the module docstring), before anything was written."""
    if not ENABLED or not gemv._active.get() or torch.is_grad_enabled() or x.dim() != 3 or x.shape[1] != 1:
        return None
    if x.dtype not in gemv.ACTIVATIONS or x.device.type != "cpu" or nn.modules.module._global_forward_hooks:
        return None
    store = getattr(cache, "cache", None)  # an engine StepView: the KVCache it writes to
    if getattr(cache, "new_tokens", None) != 1 or not hasattr(store, "k") or len(store.k) != len(layers):
        return None
    rows = x.shape[0]
    if not all(0 <= s < store.slots for s in cache.slots):  # layer.c checks positions, not slots
        return None
    plans = []
    for i, block in enumerate(layers):
        keys, values = store.k[i], store.v[i]
        layout = (store.slots, block.self_attn.n_kv, store.capacity, block.self_attn.head_dim)  # as layer.c indexes
        if (keys is None or keys.dtype != x.dtype or tuple(keys.shape) != layout or not keys.is_contiguous()
                or values.dtype != x.dtype or values.shape != keys.shape or not values.is_contiguous()
                or _hooked(block)):
            return None
        plan = _plan(block, x)
        if plan is None or rows > max_rows(plan.int8, x.dtype):
            return None
        plans.append(plan)
    lib = library()
    x = x.contiguous().clone()
    cos, sin = cos.to(x.dtype).contiguous(), sin.to(x.dtype).contiguous()
    slots = (ctypes.c_int32 * rows)(*cache.slots)
    positions = (ctypes.c_int32 * rows)(*cache.start_list)
    bf16, threads = int(x.dtype == torch.bfloat16), torch.get_num_threads()
    for i, plan in enumerate(plans):
        rc = lib.iv_decode_layer(ctypes.byref(plan.layer), rows, x.data_ptr(), bf16, slots, positions,
                                 cos.data_ptr(), sin.data_ptr(), store.k[i].data_ptr(), store.v[i].data_ptr(),
                                 store.capacity, threads)
        if rc != 0:
            raise RuntimeError(f"iv_decode_layer refused layer {i} ({rows} rows at positions {cache.start_list})")
    return x
