"""Run the whole benchmark suite and summarise it against the issue's targets.

    python -m benchmarks.run_all [--quick] [--no-fp32] [--no-memory] [--wait-quiet SECONDS] [--emulate-avx2]
    python benchmarks/run_all.py ...

--emulate-avx2 adds the inference benchmark's decode sections once more as an AVX2-only CPU (emulated on an
AVX-512 machine: `bench_inference --as-cpu avx2 --decode-only`; results/inference_avx2.json), so one run reports
both CPU kinds.

Writes benchmarks/results/{preprocess,inference,kernels,summary}.json and prints every table. About 10 minutes on a
quiet 2-core machine (--quick: about 6). On a shared machine the numbers are only as good as the machine is
quiet: every result file records the CPU contention seen at its start and end, and --wait-quiet waits (up to
the given time) for other processes to leave the CPUs idle before starting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_inference, bench_kernels, bench_llamacpp, bench_preprocess  # noqa: E402
from benchmarks import common as C  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-fp32", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each measurement wait up to this long for other processes to leave the CPUs "
                         "idle, and measure a disturbed one once more (for shared machines)")
    ap.add_argument("--emulate-avx2", action="store_true",
                    help="also run the inference benchmark as an emulated AVX2-only CPU (both CPU kinds in one run)")
    args = ap.parse_args(argv)
    C.setup()
    t0 = time.perf_counter()
    quiet = C.wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else C.cpu_contention()
    if quiet.get("other_cpu_busy_frac", 0.0) >= 0.15:
        C.log(f"WARNING: other processes are using the CPUs ({quiet}); timings will be noisy")
    C.get_checkpoint()  # once, shared by every part (and the memory subprocesses, through the environment)

    wait = ["--wait-quiet", str(args.wait_quiet)]
    pre = bench_preprocess.main(["--repeat", "8" if args.quick else "15", *wait])
    print()
    inf_args = [a for a, on in (("--quick", args.quick), ("--no-fp32", args.no_fp32),
                                ("--no-memory", args.no_memory)) if on]
    inf = bench_inference.main(inf_args + wait)
    kinds = {inf["machine"]["cpu_kind"]: inf}
    if args.emulate_avx2:
        print()
        avx2 = bench_inference.main(inf_args + wait + ["--as-cpu", "avx2", "--decode-only"])
        kinds[avx2["machine"]["cpu_kind"]] = avx2
    print()
    try:  # the decode GEMV kernels against the PyTorch path (about a minute)
        kernels = bench_kernels.main(["--repeat", "2" if args.quick else "3"])["cases"]
    except SystemExit as e:  # no C compiler here: the kernels are off, and so is their section
        C.log(f"skipping the kernels section: {e}")
        kernels = []

    anchor = None
    why = bench_llamacpp.missing()
    if why:  # the optional outside anchor: `make bench-llamacpp` builds it once
        C.log(f"skipping the llama.cpp anchor: {why}")
    else:
        print()
        anchor = bench_llamacpp.main([])

    rows = []
    for kind, r in kinds.items():
        rows += [
            [f"decode batch 1 vs transformers [{kind}]", r["decode_b1"]["speedup"], ">= 2.0x", "decode_b1_vs_ref"],
            [f"decode batch 1 of bandwidth roofline [{kind}]", r["roofline"]["ours_fraction"], ">= 0.85",
             "decode_b1_roofline"],
            [f"decode batch 8 / batch 1 throughput [{kind}]", r["batch8_scaling"]["ours"], ">= 5x", "batch8_scaling"],
        ]
        if "vision" in r:  # not measured under emulation (see bench_inference --decode-only)
            rows += [[f"vision 7 tiles vs transformers [{kind}]", r["vision"]["7_tiles"]["speedup"], ">= 1.2x",
                      "vision_7_vs_ref"],
                     [f"prefill (TTFT) vs transformers [{kind}]", r["prefill"]["speedup"], ">= 1.2x",
                      "prefill_vs_ref"]]
        for row in rows:
            if row[3] in r["target_met"]:
                row[3] = "yes" if r["target_met"][row[3]] else "NO"
    if anchor is not None:
        kind = anchor["machine"]["cpu_kind"]
        for ours, theirs in (("ours bf16", "llama.cpp F16"), ("ours int8", "llama.cpp Q8_0")):
            ratio = anchor["ratios"][f"{ours} / {theirs}"]
            rows.append([f"decode batch 1, {ours} vs {theirs} [{kind}]", ratio, ">= 1.0x", "yes" if ratio >= 1 else "NO"])
    rows.append(["preprocessing 12-tile image vs model card", pre["from_file"]["speedup"], ">= 3x",
                 "yes" if pre["target_met"] else "NO"])
    print()
    print(C.table("summary against the issue's targets (reported, not asserted)",
                  ["target", "measured", "wanted", "met"], rows))
    summary = {"machine": inf["machine"], "cpu_kinds": list(kinds), "contention_before": quiet,
               "targets": {r[0]: r[1:] for r in rows},
               "kernels_gemv": {f"{c['shape']} {c['weights']} rows={c['rows']}": {
                   "ours_gbps": c["ours_gbps"], "torch_gbps": c["torch_gbps"], "speedup": c["speedup"]}
                   for c in kernels},
               "llamacpp_decode_tok_s": anchor["decode_tok_s"] if anchor else None,
               "wall_s": time.perf_counter() - t0}
    path = C.write_results("summary", summary)
    print(f"\nwrote {path} [suite {summary['wall_s']:.0f}s]")
    return summary


if __name__ == "__main__":
    main()
