"""Inference benchmarks: ours vs transformers' native InternVL, same random InternVL3-1B weights, one process.

    python -m benchmarks.bench_inference [--quick] [--no-fp32] [--no-memory] [--wait-quiet SECONDS]
                                         [--as-cpu native|avx2] [--precision auto|uniform|mixed] [--smoke]

Measures (bf16 for both implementations unless noted; 2 threads):
  vision   `extract_feature` vs `get_image_features`, 1 and 7 tiles of 448x448
  prefill  one 1-tile image (256 image tokens) + 30 text tokens -> first token
           (ours: Engine with max_new_tokens=1; transformers: one forward with logits_to_keep=1, as generate does)
  decode   tokens/s at batch 1 and 8 (32-token prompts, 64 new tokens, greedy; batch 8 = 8 different prompts of
           25-32 tokens, left-padded for transformers); per-step times from per-token timestamps, prefill excluded
  roofline decode bytes per token (LLM weights as read + KV cache) / measured copy bandwidth
  memory   peak RSS of load + one image-prompt generation, ours and transformers each in a fresh subprocess
  what-if  ours at batch 1 with the fused decode layer off (what kernels/layer.c is worth)
  fp32     decode batch 1 in float32 (both), if not --no-fp32
Ours runs with the precision plan `internvl chat` picks on this CPU (--precision overrides; the main
sections' plan is recorded as "precision"); transformers runs bf16, as its model card does.
--as-cpu avx2 runs the whole benchmark in a child process that computes like an AVX2-only CPU (torch, oneDNN
and MKL told not to use AVX-512; `internvl.hardware.EMULATE_AVX2_ENV`); its results go to inference_avx2.json
and every result records `machine.cpu_kind` ("native avx512_bf16", "emulated avx2", ...). Emulation limits the
instruction set, not the machine: memory-bound decode behaves like an AVX2 CPU's, but oneDNN's bf16 GEMM
without AVX-512 runs ~10x slower than on a real AVX2 EPYC, so emulated bf16 compute (transformers' bf16
vision and prefill) is far slower than it would be there.
--smoke builds a narrow 2-layer model of the same kind instead of InternVL3-1B (a check of the harness in
seconds; results go to *_smoke.json, numbers meaningless).
On a shared machine pass --wait-quiet SECONDS: each section then waits for idle CPUs and a disturbed section
is measured once more; every section records the CPU share other processes took meanwhile ("other").

Numbers go to benchmarks/results/inference.json and a table on stdout. Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402

PROMPT_LEN, NEW_TOKENS, BATCH = 32, 64, 8
PREFILL_TEXT = 30  # text tokens around the image, <img> and </img> included
TARGETS = {"decode_b1_vs_ref": 2.0, "decode_b1_roofline": 0.85, "vision_7_vs_ref": 1.2, "prefill_vs_ref": 1.2,
           "batch8_scaling": 5.0}


# ---------------------------------------------------------------- inputs

def text_prompts(n: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """`n` different prompts of ordinary (non-special) token ids."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1000, 150000, (lengths[i],), generator=g).tolist() for i in range(n)]


def image_prompt(num_tiles: int = 1, text: int = PREFILL_TEXT, image_tokens: int = 256) -> list[int]:
    """text... <img> <IMG_CONTEXT> x (tiles*256) </img> text...: `text` tokens besides the image context."""
    words = text_prompts(1, [text - 2], seed=1)[0]
    half = len(words) // 2
    return (words[:half] + [C.IMG_START_ID] + [C.IMAGE_TOKEN_ID] * (image_tokens * num_tiles) + [C.IMG_END_ID]
            + words[half:])


def pixels(num_tiles: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_tiles, 3, 448, 448, generator=g)


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


# ---------------------------------------------------------------- the two implementations

class Ours:
    def __init__(self, model, max_len: int = 512) -> None:
        from internvl.engine.engine import Engine
        self.model = model
        self.engine = Engine(model, max_batch=BATCH, max_len=max_len)

    @torch.inference_mode()
    def vision(self, pv: torch.Tensor) -> torch.Tensor:
        return self.model.extract_feature(pv)

    def generate(self, prompts: list[list[int]], new_tokens: int, pixel_values=None):
        """-> (output ids per prompt, timestamps: start, then after each engine step)."""
        from internvl.engine.sampling import SamplingParams
        eng = self.engine
        seqs = [eng.submit(p, pixel_values, SamplingParams(max_new_tokens=new_tokens)) for p in prompts]
        stamps = [time.perf_counter()]
        while eng.has_work():
            eng.step()
            stamps.append(time.perf_counter())
        return [s.output_ids for s in seqs], stamps

    def first_token(self, ids: list[int], pv: torch.Tensor) -> int:
        out, _ = self.generate([ids], 1, pv)
        return out[0][0]


class _Clock:
    """A stopping criterion that never stops and records when each new token was produced."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class Ref:
    def __init__(self, model) -> None:
        self.model = model

    @torch.inference_mode()
    def vision(self, pv: torch.Tensor) -> torch.Tensor:
        return self.model.model.get_image_features(pixel_values=pv).pooler_output

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], new_tokens: int, pixel_values=None):
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Clock(_Clock, StoppingCriteria):
            pass

        ids, mask = left_pad(prompts)
        clock = Clock()
        t0 = time.perf_counter()
        extra = {} if pixel_values is None else {"pixel_values": pixel_values}
        out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, pad_token_id=0,
                                  stopping_criteria=StoppingCriteriaList([clock]), **extra)
        return out[:, ids.shape[1]:].tolist(), [t0] + clock.stamps

    @torch.inference_mode()
    def first_token(self, ids: list[int], pv: torch.Tensor) -> int:
        out = self.model(input_ids=torch.tensor([ids]), pixel_values=pv, logits_to_keep=1, use_cache=True)
        return int(out.logits[0, -1].argmax())


# ---------------------------------------------------------------- sections

def bench_vision(impls: dict, quick: bool) -> dict:
    res = {}
    for tiles, warmup, repeat in ((1, 1, 2 if quick else 3), (7, 0, 1 if quick else 2)):
        pv = pixels(tiles).to(torch.bfloat16)
        outs = {}

        def run(name):
            return lambda: outs.__setitem__(name, impls[name].vision(pv))

        C.log(f"vision: {tiles} tile(s), {warmup} warm-up + {repeat} timed runs each")
        t = C.measure_pair({k: run(k) for k in impls}, warmup=warmup, repeat=repeat)
        diff = float((outs["ours"].float() - outs["ref"].float()).abs().max())
        res[f"{tiles}_tiles"] = {**{k: v for k, v in t.items()}, "max_abs_diff": diff,
                                 "speedup": t["ref"]["median_s"] / t["ours"]["median_s"]}
    return res


def bench_prefill(impls: dict, quick: bool) -> dict:
    ids = image_prompt(1)
    pv = pixels(1, seed=2)
    toks = {}

    def run(name):
        return lambda: toks.__setitem__(name, impls[name].first_token(ids, pv))

    C.log(f"prefill: {len(ids)} tokens (256 image + {PREFILL_TEXT} text), 1 tile")
    t = C.measure_pair({k: run(k) for k in impls}, warmup=1, repeat=2 if quick else 3)
    return {**t, "prompt_tokens": len(ids), "first_token_equal": toks["ours"] == toks["ref"],
            "speedup": t["ref"]["median_s"] / t["ours"]["median_s"]}


def _decode_stats(runs: list[list[float]], batch: int) -> dict:
    """runs: timestamps [start, token 1, ..., token N] per run -> decode-step statistics (token 1 = prefill)."""
    steps = [b - a for stamps in runs for a, b in zip(stamps[1:], stamps[2:])]
    per_run = [(len(s) - 2) / (s[-1] - s[1]) * batch for s in runs]
    ttft = [s[1] - s[0] for s in runs]
    med = statistics.median(steps)
    return {"step_ms_median": med * 1e3, "step_ms_min": min(steps) * 1e3, "step_ms_max": max(steps) * 1e3,
            "tokens_per_s": batch / med, "tokens_per_s_best_step": batch / min(steps),
            "tokens_per_s_runs": per_run, "prefill_s": ttft, "steps": len(steps)}


def bench_decode(impls: dict, batch: int, new_tokens: int, repeat: int) -> dict:
    lengths = [PROMPT_LEN - i for i in range(batch)] if batch > 1 else [PROMPT_LEN]
    prompts = text_prompts(batch, lengths, seed=10 + batch)
    C.log(f"decode: batch {batch}, prompts of {min(lengths)}-{max(lengths)} tokens, {new_tokens} new tokens, "
          f"1 short warm-up + {repeat} timed runs each")
    for impl in impls.values():  # warm-up: kernels, allocator, page faults
        impl.generate(prompts, 4)
    stamps: dict[str, list] = {k: [] for k in impls}
    outs = {}
    for _ in range(repeat):
        for k, impl in impls.items():
            outs[k], s = impl.generate(prompts, new_tokens)
            stamps[k].append(s)
    res = {k: _decode_stats(v, batch) for k, v in stamps.items()}
    agree = []
    for a, b in zip(outs["ours"], outs["ref"]):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        agree.append(n)
    res.update(batch=batch, new_tokens=new_tokens, prompt_lengths=lengths, greedy_prefix_agreement=agree,
               speedup=res["ours"]["tokens_per_s"] / res["ref"]["tokens_per_s"])
    return res


class OursModules(Ours):
    """Ours with the fused decode layer off (`internvl.kernels.layer.ENABLED`): every decode step runs the
    decoder's modules, ~60 small ops a layer around the same GEMV kernels. What the fused layer is worth."""

    def generate(self, prompts, new_tokens, pixel_values=None):
        from internvl.kernels import layer
        layer.ENABLED = False
        try:
            return super().generate(prompts, new_tokens, pixel_values)
        finally:
            layer.ENABLED = True


def bench_decode_what_if(model, new_tokens: int, repeat: int) -> dict:
    """Batch-1 decode of ours with the fused decode layer off (see `OursModules`); same prompt as `bench_decode`."""
    impl = OursModules(model)
    prompts = text_prompts(1, [PROMPT_LEN], seed=11)
    C.log("decode what-if: batch 1, ours with the fused decode layer off (the modules around the GEMVs)")
    impl.generate(prompts, 4)
    runs = [impl.generate(prompts, new_tokens)[1] for _ in range(repeat)]
    return {"ours_modules": _decode_stats(runs, 1), "new_tokens": new_tokens}


def bench_roofline(ours_model, decode_b1: dict, bandwidth: dict, new_tokens: int, dtype_name: str) -> dict:
    ctx = PROMPT_LEN + new_tokens // 2  # average context length over the decode
    bytes_ = C.llm_decode_bytes(ours_model, context_len=ctx, batch=1)
    bw = bandwidth["copy_gbps"] * 1e9
    roof = bw / bytes_["total"]
    out = {"dtype": dtype_name, "bytes_per_token": bytes_, "bandwidth_gbps": bandwidth["copy_gbps"],
           "roofline_tokens_per_s": roof}
    for k in ("ours", "ref"):
        tps = decode_b1[k]["tokens_per_s"]
        out[f"{k}_tokens_per_s"] = tps
        out[f"{k}_fraction"] = tps / roof
        out[f"{k}_achieved_gbps"] = tps * bytes_["total"] / 1e9
    out["read_bandwidth_gbps"] = bandwidth["read_gbps"]
    out["ours_fraction_of_read_roofline"] = decode_b1["ours"]["tokens_per_s"] * bytes_["total"] / (
        bandwidth["read_gbps"] * 1e9)
    return out


# ---------------------------------------------------------------- memory (subprocesses)

def memory_worker(impl: str) -> dict:
    """Load one implementation and run one image-prompt generation; report RSS figures. Runs in its own
    process so that the other implementation cannot share its pages or its allocator's free lists."""
    C.setup()
    import transformers  # noqa: F401  (import cost is not the model's)
    import internvl.engine.engine  # noqa: F401
    ckpt = os.environ[C.CKPT_ENV]
    base = C.rss_bytes()
    can_reset = C.reset_peak_rss()  # VmHWM of a fresh exec starts at its own RSS; reset it to after-imports
    t0 = time.perf_counter()
    if impl == "ours":
        from internvl.precision import choose_plan
        model = C.load_ours(ckpt, precision=choose_plan("cpu"))
    else:
        model = C.load_ref(ckpt)
    load_s = time.perf_counter() - t0
    after_load, load_hwm = C.rss_bytes(), C.vm_hwm_bytes()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():  # fault every weight page in (both load lazily from the memory-mapped file)
        for p in model.parameters():
            for chunk in p.detach().reshape(-1).split(1 << 22):
                chunk.sum()
    resident = C.rss_bytes() - base
    if impl == "ours":  # one slot, as much context as the workload needs: compare activations, not cache sizing
        from internvl.engine.engine import Engine
        runner = Ours.__new__(Ours)
        runner.model, runner.engine = model, Engine(model, max_batch=1, max_len=512)
    else:
        runner = Ref(model)
    ids, pv = image_prompt(1), pixels(1, seed=3)
    runner.generate([ids], 16, pv)
    peak = C.vm_hwm_bytes() - base  # VmHWM: per address space (ru_maxrss would inherit the parent's peak)
    return {"impl": impl, "rss_base_bytes": base, "load_s": load_s, "weight_bytes": weights,
            "rss_after_load_bytes": after_load - base,
            "load_peak_delta_bytes": load_hwm - base if can_reset else None,
            "rss_weights_resident_bytes": resident, "peak_total_delta_bytes": peak,
            "peak_above_resident_bytes": peak - resident,
            "rss_end_bytes": C.rss_bytes() - base}


def run_emulated_avx2(argv: list[str]) -> dict:
    """This benchmark again in a child process that computes like an AVX2-only CPU; returns its results."""
    C.get_checkpoint()  # made here, once; the child finds it through the environment
    rest, skip = [], False
    for a in argv:  # the same arguments less --as-cpu
        if not skip and a != "--as-cpu" and not a.startswith("--as-cpu="):
            rest.append(a)
        skip = a == "--as-cpu"
    C.log("running the inference benchmark as an emulated AVX2-only CPU (child process)")
    cmd = [sys.executable, "-m", "benchmarks.bench_inference", *rest]
    proc = subprocess.run(cmd, cwd=C.BENCH_DIR.parent, env=C.emulated_avx2_env())
    if proc.returncode != 0:
        raise SystemExit(f"the emulated AVX2 run failed (exit code {proc.returncode})")
    name = "inference_avx2" + ("_smoke" if os.environ.get(C.SMOKE_ENV) == "1" else "")
    return json.loads((C.RESULTS_DIR / f"{name}.json").read_text())


def bench_memory() -> dict:
    res = {}
    for impl in ("ours", "ref"):
        C.log(f"memory: {impl} in a fresh subprocess (load + image prompt with 16 new tokens)")
        cmd = [sys.executable, "-m", "benchmarks.bench_inference", "--memory-worker", impl]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.BENCH_DIR.parent, env=os.environ.copy())
        if proc.returncode != 0:
            res[impl] = {"error": proc.stderr[-2000:]}
            continue
        res[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


# ---------------------------------------------------------------- report

def _gib(b) -> float | None:
    return None if b is None else b / 2**30


def report(r: dict) -> str:
    lines = []
    rows = []
    for tiles in ("1_tiles", "7_tiles") if "vision" in r else ():
        v = r["vision"][tiles]
        rows.append([f"vision encode, {tiles[0]} tile(s) [s]", v["ours"]["median_s"], v["ref"]["median_s"],
                     v["speedup"], TARGETS["vision_7_vs_ref"] if tiles == "7_tiles" else None,
                     v["ours"]["min_s"], v["ref"]["min_s"], r["vision"].get("other_load")])
    if "prefill" in r:
        p = r["prefill"]
        rows.append([f"prefill TTFT, {p['prompt_tokens']} tok incl. 1 tile [s]", p["ours"]["median_s"],
                     p["ref"]["median_s"], p["speedup"], TARGETS["prefill_vs_ref"], p["ours"]["min_s"],
                     p["ref"]["min_s"], p.get("other_load")])
    for key, label in (("decode_b1", "decode batch 1 [tok/s]"), ("decode_b8", "decode batch 8 [tok/s]"),
                       ("decode_b1_fp32", "decode batch 1 fp32 [tok/s]")):
        if key in r:
            d = r[key]
            rows.append([label, d["ours"]["tokens_per_s"], d["ref"]["tokens_per_s"], d["speedup"],
                         TARGETS["decode_b1_vs_ref"] if key == "decode_b1" else None,
                         d["ours"]["tokens_per_s_best_step"], d["ref"]["tokens_per_s_best_step"], d.get("other_load")])
    if "decode_b1_what_if" in r:
        d = r["decode_b1_what_if"]
        rows.append(["  what-if: ours, fused layer off [tok/s]", d["ours_modules"]["tokens_per_s"],
                     r["decode_b1"]["ref"]["tokens_per_s"], d["speedup_vs_ref"], None,
                     d["ours_modules"]["tokens_per_s_best_step"], None, d.get("other_load")])
    if "decode_b8" in r:
        d = r["decode_b8"]
        rows.append(["decode batch 8: prefill of the 8 prompts [s]", statistics.median(d["ours"]["prefill_s"]),
                     statistics.median(d["ref"]["prefill_s"]),
                     statistics.median(d["ref"]["prefill_s"]) / statistics.median(d["ours"]["prefill_s"]), None,
                     min(d["ours"]["prefill_s"]), min(d["ref"]["prefill_s"]), d.get("other_load")])
        s = r["batch8_scaling"]
        rows.append(["batch-8 / batch-1 throughput [x]", s["ours"], s["ref"], None, TARGETS["batch8_scaling"],
                     None, None, None])
    lines.append(C.table("ours vs transformers (median; speedup = how many times faster ours is; best = fastest "
                         "run or decode step; other = CPU share other processes used meanwhile)",
                         ["measurement", "ours", "transformers", "speedup", "target", "ours best", "ref best",
                          "other"], rows))
    rl = r["roofline"]
    rows = [["bytes per decode token [MB]", rl["bytes_per_token"]["total"] / 1e6, None],
            ["copy bandwidth (read+write) [GB/s]", rl["bandwidth_gbps"], None],
            ["roofline [tok/s]", rl["roofline_tokens_per_s"], None],
            ["achieved fraction of roofline", rl["ours_fraction"], rl["ref_fraction"]],
            ["  what-if, ours with the fused layer off", rl.get("what_if_modules_fraction"), None],
            ["achieved weight bandwidth [GB/s]", rl["ours_achieved_gbps"], rl["ref_achieved_gbps"]]]
    if "roofline_fp32" in r:
        rf = r["roofline_fp32"]
        rows += [["fp32 roofline [tok/s]", rf["roofline_tokens_per_s"], None],
                 ["fp32 achieved fraction", rf["ours_fraction"], rf["ref_fraction"]]]
    lines.append(C.table(f"decode roofline (bf16, batch 1; target >= {TARGETS['decode_b1_roofline']:.0%} for ours)",
                         ["", "ours", "transformers"], rows))
    if r.get("memory"):
        m = r["memory"]
        rows = []
        for key, label in (("weight_bytes", "weights (parameter bytes) [GiB]"),
                           ("rss_after_load_bytes", "RSS right after load [GiB]"),
                           ("load_peak_delta_bytes", "peak RSS during load [GiB]"),
                           ("rss_weights_resident_bytes", "RSS with every weight page touched [GiB]"),
                           ("peak_total_delta_bytes", "peak RSS, load + generate [GiB]"),
                           ("peak_above_resident_bytes", "  generate's peak above resident weights [GiB]")):
            rows.append([label, _gib(m.get("ours", {}).get(key)), _gib(m.get("ref", {}).get(key))])
        lines.append(C.table("memory above the RSS after imports (separate processes; bf16; 1-tile image prompt "
                             "+ 16 new tokens)",
                             ["", "ours", "transformers"], rows))
    checks = []
    if "vision" in r:
        checks.append(f"vision max |ours-ref| 1 tile {r['vision']['1_tiles']['max_abs_diff']:.3g}, "
                      f"7 tiles {r['vision']['7_tiles']['max_abs_diff']:.3g}")
    if "prefill" in r:
        checks.append(f"prefill first token equal: {r['prefill']['first_token_equal']}")
    for key in ("decode_b1", "decode_b8", "decode_b1_fp32"):
        if key in r:
            checks.append(f"{key} greedy tokens agreeing (prefix per row, of {r[key]['new_tokens']}): "
                          f"{r[key]['greedy_prefix_agreement']}")
    lines.append("sanity: " + "; ".join(checks))
    return "\n\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about half the time)")
    ap.add_argument("--no-fp32", action="store_true", help="skip the float32 decode measurement")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each section wait up to this long for other processes to leave the CPUs idle, "
                         "and measure a disturbed section once more")
    ap.add_argument("--as-cpu", choices=("native", "avx2"), default="native",
                    help="avx2: measure in a child process that computes like an AVX2-only CPU")
    ap.add_argument("--precision", choices=("auto", "uniform", "mixed"), default="auto",
                    help="ours: the precision plan (auto: as `internvl chat` picks it on this CPU)")
    ap.add_argument("--decode-only", action="store_true",
                    help="skip vision and prefill (under --as-cpu avx2 they time emulated bf16 GEMMs, ~10x slower "
                         "than a real AVX2 CPU's; decode is memory-bound and emulates faithfully)")
    ap.add_argument("--smoke", action="store_true", help="a narrow 2-layer model: checks the harness in seconds")
    ap.add_argument("--memory-worker", choices=("ours", "ref"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ[C.SMOKE_ENV] = "1"  # children (memory, emulation) build the same narrow model
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker)))
        return {}
    if args.as_cpu == "avx2":
        return run_emulated_avx2(argv if argv is not None else sys.argv[1:])

    C.setup()
    t_start = time.perf_counter()
    info = C.machine_info()
    C.log(C.describe(info))
    from internvl.precision import choose_plan
    plan = choose_plan("cpu", None, args.precision)
    r: dict = {"machine": info, "preset": C.PRESET, "threads": C.THREADS, "contention_start": C.cpu_contention(),
               "precision": plan.describe(), "smoke": args.smoke}
    C.log(f"ours: {plan.describe()}; transformers: bf16")
    ckpt = C.get_checkpoint()
    ours_model = C.load_ours(ckpt, precision=plan)
    impls = {"ours": Ours(ours_model), "ref": Ref(C.load_ref(ckpt, torch.bfloat16))}
    repeat = 1 if args.quick else 2
    new_tokens = 8 if args.smoke else NEW_TOKENS
    C.log("memory bandwidth: 1 GiB copy (again after decode; the better of the two is the roofline's)")
    C.wait_quiet(args.wait_quiet) if args.wait_quiet else None
    gib = 0.125 if args.smoke else 1.0
    bw_runs = [C.memory_bandwidth(gib)]

    if not args.decode_only:
        r["vision"] = C.run_section(bench_vision, impls, args.quick, wait=args.wait_quiet)
        r["prefill"] = C.run_section(bench_prefill, impls, args.quick, wait=args.wait_quiet)
    r["decode_b1"] = C.run_section(bench_decode, impls, 1, new_tokens, repeat, wait=args.wait_quiet)
    r["decode_b8"] = C.run_section(bench_decode, impls, BATCH, new_tokens, repeat, wait=args.wait_quiet)
    r["decode_b1_what_if"] = C.run_section(bench_decode_what_if, ours_model, new_tokens, repeat,
                                           wait=args.wait_quiet)
    r["batch8_scaling"] = {k: r["decode_b8"][k]["tokens_per_s"] / r["decode_b1"][k]["tokens_per_s"]
                           for k in ("ours", "ref")}
    C.wait_quiet(args.wait_quiet) if args.wait_quiet else None
    bw_runs.append(C.memory_bandwidth(gib))
    bw = {k: max(b[k] for b in bw_runs) for k in bw_runs[0]}
    r["bandwidth"] = {**bw, "runs": bw_runs}
    r["roofline"] = bench_roofline(ours_model, r["decode_b1"], bw, new_tokens, "bfloat16")
    w = r["decode_b1_what_if"]["ours_modules"]["tokens_per_s"]
    r["roofline"]["what_if_modules_fraction"] = w / r["roofline"]["roofline_tokens_per_s"]
    r["decode_b1_what_if"]["speedup_vs_ref"] = w / r["decode_b1"]["ref"]["tokens_per_s"]
    del impls, ours_model

    if not args.no_fp32:
        ours32 = C.load_ours(ckpt, torch.float32)
        impls = {"ours": Ours(ours32), "ref": Ref(C.load_ref(ckpt, torch.float32))}
        r["decode_b1_fp32"] = C.run_section(bench_decode, impls, 1, new_tokens // 2, repeat, wait=args.wait_quiet)
        r["roofline_fp32"] = bench_roofline(ours32, r["decode_b1_fp32"], bw, new_tokens // 2, "float32")
        del impls, ours32

    if not args.no_memory:
        r["memory"] = bench_memory()

    r["targets"] = TARGETS
    r["target_met"] = {
        "decode_b1_vs_ref": r["decode_b1"]["speedup"] >= TARGETS["decode_b1_vs_ref"],
        "decode_b1_roofline": r["roofline"]["ours_fraction"] >= TARGETS["decode_b1_roofline"],
        "batch8_scaling": r["batch8_scaling"]["ours"] >= TARGETS["batch8_scaling"],
    }
    if not args.decode_only:
        r["target_met"]["vision_7_vs_ref"] = r["vision"]["7_tiles"]["speedup"] >= TARGETS["vision_7_vs_ref"]
        r["target_met"]["prefill_vs_ref"] = r["prefill"]["speedup"] >= TARGETS["prefill_vs_ref"]
    r["contention_end"] = C.cpu_contention()
    r["wall_s"] = time.perf_counter() - t_start
    path = C.write_results("inference", r)
    print(report(r))
    print(f"\ntargets met: {r['target_met']}")
    print(f"contention (other processes) start {r['contention_start']}, end {r['contention_end']}")
    print(f"wrote {path} [{r['wall_s']:.0f}s]")
    return r


if __name__ == "__main__":
    main()
