"""Precision per phase: weights stored once, each inference phase computed in the dtype that suits it.

The vision tower and LLM prefill are compute-bound (big matrix-matrix products); decode steps are
memory-bound (every step reads every weight once for a few rows). Where the CPU computes bf16 natively
(AVX512-BF16, AMX) or on CUDA, bf16 is right for all three. On an AVX2-only CPU no single dtype is: bf16
GEMMs are emulated (~6x slower than fp32) while bf16 weights halve what a decode step reads. The `mixed`
plan there stores the weights in bf16, decodes with them as they are (torch's bf16 GEMV), and computes the
vision tower and prefill in fp32, widening each weight inside the op that uses it (`compute_in`): no second
copy of the model, one layer's largest matrix in fp32 at a time.

`PrecisionPlan` is what the engine and the model read (`model.precision`); `choose_plan` picks it from the
device, the CPU kind (`hardware.cpu_kind`) and the user's `--dtype` / `--precision`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from .hardware import CPUKind, cpu_kind

PRECISIONS = ("auto", "uniform", "mixed")
_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def dtype_name(dtype: torch.dtype) -> str:
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class PrecisionPlan:
    weights: torch.dtype  # how the weights are stored; decode steps compute in it (and the KV cache holds it)
    vision: torch.dtype  # the vision tower and projector compute in this
    prefill: torch.dtype  # LLM prompt forwards compute in this
    why: dict[str, str] = field(default_factory=dict, compare=False)  # phase -> one line: why this dtype

    @property
    def decode(self) -> torch.dtype:
        return self.weights

    @property
    def uniform(self) -> bool:
        return self.vision == self.prefill == self.weights

    @classmethod
    def uniform_in(cls, dtype: torch.dtype, why: str = "one dtype for every phase") -> PrecisionPlan:
        return cls(dtype, dtype, dtype, {"vision": why, "prefill": why, "decode": why})

    def describe(self) -> str:
        if self.uniform:
            return f"uniform {dtype_name(self.weights)}"
        return (f"mixed: weights {dtype_name(self.weights)}, vision {dtype_name(self.vision)}, "
                f"prefill {dtype_name(self.prefill)}, decode {dtype_name(self.decode)}")


def choose_plan(device: str | torch.device = "cpu", dtype: str | None = None, precision: str = "auto",
                kind: CPUKind | None = None) -> PrecisionPlan:
    """The plan for `device`: `dtype` ('auto'/None or a name of runtime.DTYPES) and `precision`:

    - auto: a given `dtype` is used for every phase (the old `--dtype`); otherwise bf16 everywhere on CUDA
      and on CPUs with native bf16, the mixed plan on AVX2-only CPUs, fp32 elsewhere (unmeasured there).
    - uniform: every phase in `dtype` (auto: bf16 where computed natively, else fp32).
    - mixed: weights and decode in `dtype` (auto: bf16), vision and prefill in fp32.
    """
    from .runtime import DTYPES
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if dtype not in (None, "auto") and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    given = None if dtype in (None, "auto") else DTYPES[dtype]
    cuda = torch.device(device).type == "cuda"
    kind = kind or cpu_kind()
    if precision == "mixed":
        weights = given or torch.bfloat16
        return _mixed(weights, "--precision mixed")
    if given is not None:
        return PrecisionPlan.uniform_in(given, f"--dtype {dtype_name(given)} for every phase")
    if cuda:
        return PrecisionPlan.uniform_in(torch.bfloat16, "CUDA computes bf16 natively")
    if kind.native_bf16:
        return PrecisionPlan.uniform_in(torch.bfloat16, f"the CPU computes bf16 natively ({kind.kind}, {kind.source})")
    if precision == "uniform" or kind.kind != "avx2":
        why = ("--precision uniform, and bf16 is not native on this CPU" if precision == "uniform"
               else f"CPU kind {kind.kind}: fp32, the safe default (mixed precision unmeasured here)")
        return PrecisionPlan.uniform_in(torch.float32, why)
    return _mixed(torch.bfloat16, f"AVX2 without native bf16, {kind.source}")


def _mixed(weights: torch.dtype, because: str) -> PrecisionPlan:
    w = dtype_name(weights)
    return PrecisionPlan(weights, torch.float32, torch.float32, {
        "vision": f"compute-bound: fp32 GEMMs, each {w} weight widened inside its op ({because})",
        "prefill": f"compute-bound: fp32 GEMMs, each {w} weight widened inside its op ({because})",
        "decode": f"memory-bound: reads the {w} weights as stored ({because})",
    })


# ---------------------------------------------------------------- computing wider than the weights

_active = threading.local()  # the dtype compute_in() set on this thread, if any

# Ops that write into their first argument (and `name_` methods): widening it would write into a temporary.
# They need no help: copies and in-place arithmetic cast what they are given.
_WRITES = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imatmul__",
           "__ipow__", "__get__", "__set__"}


def _passes_through(name: str, kwargs: dict) -> bool:
    return name in _WRITES or (name.endswith("_") and not name.endswith("__")) or "out" in kwargs


class _Widen(TorchFunctionMode):
    """Every op whose floating tensor arguments mix `dtype` and narrower dtypes gets them all in `dtype`;
    embeddings come out in `dtype`. Torch function modes are per thread: other threads are not affected."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__setitem__" and len(args) == 3:  # e.g. a KV cache write: the value narrows to the buffer
            dest, key, value = args
            if (isinstance(value, torch.Tensor) and value.is_floating_point() and dest.is_floating_point()
                    and value.dtype != dest.dtype):
                args = (dest, key, value.to(dest.dtype))  # index_put (a tensor index) refuses mixed dtypes
            return func(*args, **kwargs)
        if _passes_through(name, kwargs):
            return func(*args, **kwargs)
        if name == "embedding":
            out = func(*args, **kwargs)
            return out.to(self.dtype) if out.is_floating_point() else out
        leaves, _ = tree_flatten((args, kwargs))
        floats = {t.dtype for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()}
        if self.dtype in floats and len(floats) > 1:
            wide = self.dtype
            args, kwargs = tree_map(lambda t: t.to(wide) if isinstance(t, torch.Tensor) and t.is_floating_point()
                                    and t.dtype != wide else t, (args, kwargs))
        return func(*args, **kwargs)


@contextlib.contextmanager
def compute_in(dtype: torch.dtype, weights: torch.dtype) -> Iterator[None]:
    """Run the block's ops in `dtype` over weights stored in `weights` (nothing to do when they are equal).
    Inputs must already be in `dtype` (`compute_dtype` tells model code what to cast to)."""
    if dtype == weights:
        yield
        return
    previous = getattr(_active, "dtype", None)
    _active.dtype = dtype
    try:
        with _Widen(dtype):
            yield
    finally:
        _active.dtype = previous


def compute_dtype(weights: torch.dtype) -> torch.dtype:
    """The dtype to cast inputs to: the enclosing `compute_in`'s on this thread, else the weights' own."""
    return getattr(_active, "dtype", None) or weights


def plan_of(model: torch.nn.Module) -> PrecisionPlan:
    """`model.precision` (set by the CLI/server), else one dtype: the weights'. Raises ValueError when the
    plan's weight dtype is not the model's."""
    weights = next(model.parameters()).dtype
    plan = getattr(model, "precision", None)
    if plan is None:
        return PrecisionPlan.uniform_in(weights, "the model's dtype (no precision plan set)")
    if plan.weights != weights:
        raise ValueError(f"the precision plan stores weights in {dtype_name(plan.weights)} but the model's are "
                         f"{dtype_name(weights)}: load it with dtype={dtype_name(plan.weights)}")
    return plan
