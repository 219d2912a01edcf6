"""Decode GEMV: the compiled kernels (internvl.kernels) against the PyTorch path they replace, Qwen2.5-0.5B shapes.

    python -m benchmarks.bench_kernels [--repeat 3] [--threads 2]

For each weight shape of InternVL3-1B's LLM (gate/up 4864x896, down 896x4864, LM head 151936x896), bf16 and
int8 (per-row scales), and 1 and 8 activation rows: milliseconds per product, the weight bytes streamed per
second, and the speed-up. The PyTorch path is what a decode step ran before the kernels: `F.linear` on bf16
(oneDNN off for one row, as `runtime.matmul_mode` sets it) and `quantize.Int8Linear` (torch's int8pack GEMV
up to 4 rows, dequantize + GEMM above). Random weights; each measurement cycles through enough copies of
the matrix (>= 256 MB) that it streams from memory, as a decode step does, not from the last-level cache.
`cpu_per_wall` is process CPU time over wall time while our kernel runs: about the thread count when every
thread works; `*_cpu_ms` is the CPU time (all threads) per product, the fairer comparison on a busy machine.
Writes benchmarks/results/kernels.json with the machine described and the CPU contention.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402
from internvl.kernels import build, dense_weight, int8_weight, matmul  # noqa: E402
from internvl.quantize import Int8Linear, quantize_weight  # noqa: E402
from internvl.runtime import _gemv_mode  # noqa: E402

SHAPES = {"gate/up 4864x896": (4864, 896), "down 896x4864": (896, 4864), "head 151936x896": (151936, 896)}
STREAM_BYTES = 256 * 2**20  # per measurement, more than any last-level cache


def cases(fmt: str, n: int, k: int, rows: int, seed: int):
    """(ours, torch, bytes per product) callables over enough weight copies to stream from memory."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16)
    per = n * k * (2 if fmt == "bf16" else 1) + (n * 2 if fmt == "int8" else 0)
    copies = max(1, -(-STREAM_BYTES // per))
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    if fmt == "bf16":
        mats = [w] + [w.clone() for _ in range(copies - 1)]
        ours = [dense_weight(m) for m in mats]
        ref = [lambda m=m: F.linear(x, m) for m in mats]
    else:
        q, scale = quantize_weight(w)
        mods = [Int8Linear(q.clone() if i else q, scale) for i in range(copies)]
        ours = [int8_weight(m.qweight, m.scale) for m in mods]
        ref = [lambda m=m: m(x) for m in mods]

    def run_ours():
        for wt in ours:
            matmul(x, wt)

    def run_ref():
        with _gemv_mode(rows, torch.bfloat16, "cpu"):
            for fn in ref:
                fn()

    return run_ours, run_ref, per * copies, copies


def interleaved(fns: dict, repeat: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process CPU seconds of each run, the implementations alternating (after one warm-up each)."""
    for fn in fns.values():
        fn()
    out = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            out[k]["wall"].append(time.perf_counter() - w0)
            out[k]["cpu"].append(time.process_time() - c0)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=C.THREADS)
    args = ap.parse_args(argv)
    C.setup(args.threads)
    lib = build.library()
    if lib is None:
        raise SystemExit("the decode kernels are unavailable here (see the warning above)")
    r = {"machine": C.machine_info(), "contention_start": C.cpu_contention(), "kernel_isa": lib.iv_isa().decode(),
         "team_size": lib.iv_team_size(torch.get_num_threads()), "openmp_runtime": build.openmp_runtime(lib),
         "bandwidth": C.memory_bandwidth(gib=0.5, repeat=3), "cases": []}
    for name, (n, k) in SHAPES.items():
        for fmt in ("bf16", "int8"):
            for rows in (1, 8):
                ours, ref, streamed, copies = cases(fmt, n, k, rows, seed=len(r["cases"]))
                load = C.OtherLoad().start()
                t = interleaved({"ours": ours, "torch": ref}, args.repeat)
                case = {"shape": name, "weights": fmt, "rows": rows, "copies": copies, "other_load": load.stop(),
                        "cpu_per_wall": round(sum(t["ours"]["cpu"]) / sum(t["ours"]["wall"]), 2)}
                for impl in ("ours", "torch"):
                    s = statistics.median(t[impl]["wall"]) / copies
                    cpu = statistics.median(t[impl]["cpu"]) / copies
                    case[f"{impl}_ms"] = s * 1e3
                    case[f"{impl}_gbps"] = streamed / copies / s / 1e9
                    case[f"{impl}_cpu_ms"] = cpu * 1e3  # CPU time of all threads: comparable under contention
                case["speedup"] = case["torch_ms"] / case["ours_ms"]
                r["cases"].append(case)
                C.log(f"{name} {fmt} rows={rows}: ours {case['ours_ms']:.2f} ms ({case['ours_gbps']:.1f} GB/s), "
                      f"torch {case['torch_ms']:.2f} ms ({case['torch_gbps']:.1f} GB/s)")
    return C.finish("kernels", r, report)


def report(r: dict) -> str:
    bw = r["bandwidth"]
    rows = [[c["shape"], c["weights"], c["rows"], c["ours_ms"], c["torch_ms"], c["speedup"], c["ours_gbps"],
             c["torch_gbps"], c["ours_cpu_ms"], c["torch_cpu_ms"], c["cpu_per_wall"], c["other_load"]]
            for c in r["cases"]]
    title = (f"decode GEMV, {C.describe(r['machine'])}\nkernel build {r['kernel_isa']}, team of {r['team_size']} "
             f"threads; read bandwidth {bw['read_gbps']:.1f} GB/s, copy {bw['copy_gbps']:.1f} GB/s")
    return C.table(title, ["shape", "weights", "rows", "ours ms", "torch ms", "speed-up", "ours GB/s", "torch GB/s",
                           "ours cpu ms", "torch cpu ms", "cpu/wall", "other"], rows)


if __name__ == "__main__":
    main()
