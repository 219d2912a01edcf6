"""What machine we run on: the CPU kind that decides the precision plan (`precision.py`), and the facts
`internvl info --hardware` prints.

CPU kinds: `amx_bf16` and `avx512_bf16` compute bf16 natively (a bf16 GEMM runs faster than fp32);
`avx2` computes bf16 by widening to fp32 in software (a bf16 GEMM ~6x slower than fp32 on an AVX2 EPYC,
while a bf16 GEMV still reads half fp32's bytes); `other` is anything else (ARM, old x86).

The kind is read from /proc/cpuinfo, then lowered to `avx2` when the process is told not to use AVX-512
(`ATEN_CPU_CAPABILITY=avx2` for torch's own kernels, `ONEDNN_MAX_CPU_ISA=AVX2` for oneDNN's GEMMs): that is
how the benchmarks and tests emulate an AVX2-only CPU on an AVX-512 one (`EMULATE_AVX2_ENV`).
`INTERNVL_CPU_KIND` overrides everything (tests force each kind with it).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
from dataclasses import dataclass

import torch

KIND_ENV = "INTERNVL_CPU_KIND"
CPU_KINDS = ("amx_bf16", "avx512_bf16", "avx2", "other")
NATIVE_BF16_KINDS = ("amx_bf16", "avx512_bf16")
# The flags worth printing: what torch's and oneDNN's kernels dispatch on for fp32, bf16 and int8.
REPORTED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

# Set before torch is imported (a child process), these make an AVX-512 machine compute like an AVX2-only
# one: torch's vectorized kernels, oneDNN's GEMMs (its bf16 GEMM drops from native speed to emulated) and
# MKL's fp32 GEMM all stop using AVX-512, and our decode kernels are built for AVX2; `cpu_kind` then reports
# "avx2 (emulated: ...)".
EMULATE_AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                    "INTERNVL_KERNELS_ISA": "avx2"}


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ('', {}) where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return name or platform.machine(), flags


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


def _detected_kind(flags: frozenset[str]) -> str:
    if "amx_bf16" in flags:
        return "amx_bf16"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "avx2" if "avx2" in flags else "other"


def _lowering() -> str | None:
    """Why this process will not use AVX-512 although the CPU has it (an emulation variable), or None."""
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if aten in ("avx2", "default"):
        return f"ATEN_CPU_CAPABILITY={aten}"
    if onednn and not onednn.startswith(("AVX512", "AVX10", "ALL")):
        return f"ONEDNN_MAX_CPU_ISA={onednn}"
    return None


@dataclass(frozen=True)
class CPUKind:
    kind: str  # one of CPU_KINDS
    source: str  # why: "detected", "INTERNVL_CPU_KIND=avx2", "emulated: ATEN_CPU_CAPABILITY=avx2"

    @property
    def native_bf16(self) -> bool:
        return self.kind in NATIVE_BF16_KINDS

    @property
    def emulated(self) -> bool:
        return self.source != "detected"


def cpu_kind() -> CPUKind:
    """The CPU kind this process computes on (see the module docstring); read anew on each call, so a test
    may set INTERNVL_CPU_KIND."""
    forced = os.environ.get(KIND_ENV)
    if forced:
        if forced not in CPU_KINDS:
            raise ValueError(f"{KIND_ENV}={forced!r}: expected one of {', '.join(CPU_KINDS)}")
        return CPUKind(forced, f"{KIND_ENV}={forced}")
    kind = _detected_kind(cpu_flags())
    lowered = _lowering()
    if kind in NATIVE_BF16_KINDS and lowered:
        return CPUKind("avx2", f"emulated: {lowered}")
    return CPUKind(kind, "detected")


def memory_gib() -> tuple[float, float] | None:
    """(total, available) GiB from /proc/meminfo, or None."""
    try:
        with open("/proc/meminfo") as f:
            fields = {k: v.split()[0] for k, _, v in (line.partition(":") for line in f)}
        return int(fields["MemTotal"]) / 2**20, int(fields["MemAvailable"]) / 2**20
    except (OSError, KeyError, ValueError, IndexError):
        return None


def fast_paths() -> dict[str, str]:
    """The optional fast paths and whether this machine has them (name -> one phrase)."""
    from .quantize import PACK_MAX_ROWS
    int8 = hasattr(torch, "_weight_int8pack_mm")
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return {
        "bf16 GEMV": "yes: 1-row bf16 decode steps use torch's own kernel instead of oneDNN (runtime.matmul_mode)",
        "int8 GEMV": (f"yes: torch._weight_int8pack_mm for --quantize int8 steps of <= {PACK_MAX_ROWS} rows"
                      if int8 else "no: this torch lacks _weight_int8pack_mm; --quantize int8 dequantizes per matmul"),
        "C compiler": (f"{compiler} (for the compiled decode kernels: GEMV, fused decode layer)" if compiler
                       else "none found (compiled kernels fall back)"),
        "CUDA": (f"{torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s)"
                 if torch.cuda.is_available() else "not available"),
    }


def available_cpus() -> int:
    """Logical CPUs this process may run on (a container's or taskset's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API on this platform
        return os.cpu_count() or 1


def machine_line() -> str:
    """The machine a measurement ran on, in one phrase for a report or model card: CPU model, kind, the CPUs
    this process may use, and the GPU when there is one (a number means little without it)."""
    line = f"{_cpuinfo()[0]} ({cpu_kind().kind}), {available_cpus()} CPUs"
    if torch.cuda.is_available():
        line += f", {torch.cuda.get_device_name(0)}"
    return line


def report() -> list[str]:
    """`internvl info --hardware`'s machine lines: CPU, ISA, threads, memory, CUDA."""
    name, flags = _cpuinfo()
    kind = cpu_kind()
    lines = [f"cpu         {name} ({platform.machine()})"]
    isa = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in REPORTED_FLAGS) if flags else "unknown"
    lines.append(f"isa         {isa}")
    backends = f"torch kernels {torch.backends.cpu.get_cpu_capability()}"
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        backends += f", oneDNN limited to {os.environ['ONEDNN_MAX_CPU_ISA']}"
    lines.append(f"cpu kind    {kind.kind} ({kind.source}; {backends})")
    lines.append(f"threads     torch uses {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}); "
                 f"{available_cpus()} of {os.cpu_count()} logical CPUs available to this process")
    mem = memory_gib()
    lines.append(f"memory      {mem[0]:.1f} GiB total, {mem[1]:.1f} GiB available" if mem else "memory      unknown")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"cuda        {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                     f"{torch.cuda.device_count()} device(s), bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        lines.append("cuda        not available")
    return lines
