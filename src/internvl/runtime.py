"""Where and in what precision to run: the default device and the one default dtype.

bf16 halves the bytes every decode step reads, which is what bounds CPU decoding; as the one dtype of a
model it is the default only where the CPU computes bf16 natively (AVX512-BF16 or AMX), otherwise bf16
matmuls are emulated and slower than fp32. GPUs use bf16. Inference commands go further and pick a dtype
per phase (`precision.py`); this single default serves training and tools that run one dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .hardware import cpu_kind

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def cpu_has_bf16() -> bool:
    """Whether this process computes bf16 natively on the CPU (see `hardware.cpu_kind`)."""
    return cpu_kind().native_bf16


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def resolve_dtype(name: str | None, device: str | torch.device) -> torch.dtype:
    """'auto' / None -> the device default; otherwise one of DTYPES' names."""
    if name in (None, "auto"):
        return default_dtype(device)
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}") from None


# Up to this many rows, a bf16 matmul on CPU runs faster through PyTorch's own GEMV kernels than through
# oneDNN, whose GEMM setup dominates when there is one row (measured with benchmarks/bench_inference.py: the
# 1-row decode step ~1.7x faster; from 2-4 rows oneDNN wins again).
GEMV_MAX_ROWS = 1


@contextlib.contextmanager
def matmul_mode(rows: int, dtype: torch.dtype, device: torch.device | str) -> Iterator[None]:
    """The matmul backends for a forward over `rows` token rows (a decode step): the decoder's linear layers
    through `internvl.kernels` where they apply, the other matmuls as GEMV_MAX_ROWS says."""
    from .kernels import decode_kernels  # compiled on first use: only a decode step should pay for it

    with decode_kernels(rows, dtype, device), _gemv_mode(rows, dtype, device):
        yield


@contextlib.contextmanager
def _gemv_mode(rows: int, dtype: torch.dtype, device: torch.device | str) -> Iterator[None]:
    if not (rows <= GEMV_MAX_ROWS and dtype == torch.bfloat16 and torch.device(device).type == "cpu"):
        yield
        return
    # set the one switch directly: `torch.backends.mkldnn.flags()` also touches TF32 settings and warns
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous
