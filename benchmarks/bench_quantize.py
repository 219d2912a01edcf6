"""Weight-only int8 (`internvl.quantize`) on the InternVL3-1B shape, random weights, CPU: speed, memory, accuracy.

    python benchmarks/bench_quantize.py [--threads 2] [--prompt-len 64] [--new-tokens 30] [--positions 200]
                                        [--wait-quiet SECONDS]

Three copies of one model: bf16; int8 with the LM head kept bf16 (`skip_lm_head=True`); int8 everywhere in the
decoder (InternVL3-1B's head is untied, 136M of its 630M LLM parameters). For each: batch-1 decode tokens/s
through the Engine (greedy, after a warm-up, the variants' runs interleaved so drifting machine load hits all
alike; prefill timed apart), parameter+buffer bytes, and the accuracy of the next-token logits against bf16
over `--positions` positions of random text, computed the way decoding computes them (one token at a time
through the KV cache, so the int8 GEMV kernel is the one measured). As a yardstick, the same statistics compare
bf16's own decode-path logits with its full-sequence forward: the noise bf16 arithmetic alone makes. Random
weights give flat next-token distributions (small top-1 margins), so the top-1 agreement here is a pessimistic
stand-in for a trained model's. Writes benchmarks/results/quantize.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from internvl.engine.engine import Engine
from internvl.engine.kv_cache import KVCache
from internvl.engine.sampling import SamplingParams
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.quantize import model_bytes, quantize_int8

RESULTS = Path(__file__).resolve().parent / "results" / "quantize.json"


def contention(interval: float = 0.5) -> dict:
    """Load average and the share of all CPU time used by others while this process sleeps (0 = quiet)."""
    def busy() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(vals) - vals[3] - vals[4], sum(vals)
    try:
        (b0, t0), _, (b1, t1) = busy(), time.sleep(interval), busy()
        return {"loadavg_1m": os.getloadavg()[0], "other_cpu_busy_frac": round((b1 - b0) / max(t1 - t0, 1), 3)}
    except OSError:
        return {}


def build(cfg=None) -> InternVL:
    """Random bf16 weights (std 0.02, seed 0) in `cfg`, by default InternVL3-1B's configuration."""
    cfg = cfg or PRESETS["InternVL3-1B"].config
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # never materialize the fp32 model (3.8 GB)
    try:
        model = InternVL(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    torch.manual_seed(0)
    model.init_weights(0.02)
    return model


def timed_run(engine: Engine, prompt: list[int], new_tokens: int) -> dict:
    seq = engine.submit(prompt, None, SamplingParams(max_new_tokens=new_tokens))
    t0 = time.perf_counter()
    engine.step()  # prefill + first token
    t1 = time.perf_counter()
    while engine.has_work():
        engine.step()
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_tok_s": (len(seq.output_ids) - 1) / (t2 - t1), "ids": seq.output_ids}


@torch.inference_mode()
def decode_logits(model: InternVL, ids: list[int]) -> torch.Tensor:
    """(T,) -> (T, vocab) fp32 next-token logits, fed one token at a time through the KV cache (1-row matmuls)."""
    llm, cfg = model.language_model, model.config.llm
    cache = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, len(ids), cfg.dim_per_head, torch.bfloat16)
    slot = cache.allocate()
    out = []
    for t in ids:
        view = cache.step([slot], 1)
        h = llm(llm.embed_tokens(torch.tensor([[t]])), view.positions(), view.mask(), view)
        out.append(llm.logits(h[:, -1]).float())
    return torch.cat(out)


def compare(got: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = (got - ref).abs()
    top5 = got.topk(5, dim=-1).indices
    return {"max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
            "rel_err": ((got - ref).norm() / ref.norm()).item(),
            "top1_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "ref_top1_in_top5": (top5 == ref.argmax(-1, keepdim=True)).any(-1).float().mean().item()}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=30)
    ap.add_argument("--positions", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to this long for other processes to leave the CPUs (< 15%% busy)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    deadline, start = time.monotonic() + args.wait_quiet, contention()
    while start.get("other_cpu_busy_frac", 0.0) >= 0.15 and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: {start}", flush=True)
        time.sleep(5)
        start = contention()
    t_start = time.perf_counter()
    model = build()
    vocab = model.config.llm.vocab_size
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 151643, (args.prompt_len,), generator=g).tolist()  # ordinary (non-special) tokens
    text = torch.randint(0, 151643, (args.positions,), generator=g).tolist()
    llm_params = sum(p.numel() for p in model.language_model.parameters())
    print(f"InternVL3-1B shape: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params "
          f"({llm_params / 1e6:.1f}M LLM), vocab {vocab}, {args.threads} threads", flush=True)

    ref = decode_logits(model, text)
    with torch.inference_mode():
        full = model(torch.tensor([text])).logits[0].float()
    top2 = ref.topk(2, dim=-1).values
    result = {"model": "InternVL3-1B shape, random N(0, 0.02) weights, bf16", "threads": args.threads,
              "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "machine": platform.processor() or platform.machine(), "contention_start": start,
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "positions": args.positions,
              "ref_logit_std": ref.std().item(), "ref_mean_top1_margin": (top2[:, 0] - top2[:, 1]).mean().item(),
              "bf16_decode_vs_full_forward": compare(full, ref), "variants": {"bf16": {}}}
    del full
    result["lm_head_tied"] = model.language_model.lm_head is None
    models = {"bf16": model}
    for name, kwargs in [("int8_lm_head_bf16", {"skip_lm_head": True}), ("int8", {})]:
        t0 = time.perf_counter()
        models[name] = quantize_int8(copy.deepcopy(model), **kwargs)
        result["variants"][name] = {"quantize_s": round(time.perf_counter() - t0, 2)}
    engines = {}
    for name, m in models.items():
        engines[name] = Engine(m, max_batch=1, max_len=args.prompt_len + args.new_tokens + 8)
        engines[name].generate([(prompt[:16], None, SamplingParams(max_new_tokens=8))])  # warm-up
    runs: dict[str, list] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            runs[name].append(timed_run(engine, prompt, args.new_tokens))
    for name, m in models.items():
        entry = result["variants"][name]
        entry["model_bytes"], entry["llm_bytes"] = model_bytes(m), model_bytes(m.language_model)
        entry["decode_tok_s"] = statistics.median(r["decode_tok_s"] for r in runs[name])
        entry["prefill_s"] = statistics.median(r["prefill_s"] for r in runs[name])
        entry["runs"] = [{k: round(r[k], 4) for k in ("prefill_s", "decode_tok_s")} for r in runs[name]]
        if name != "bf16":
            entry["accuracy_vs_bf16"] = compare(decode_logits(m, text), ref)
            ids, want = runs[name][0]["ids"], runs["bf16"][0]["ids"]
            entry["greedy_tokens_equal_to_bf16"] = next((i for i, (a, b) in enumerate(zip(ids, want)) if a != b),
                                                        len(want))  # leading tokens of the 30 that match
        acc = entry.get("accuracy_vs_bf16", {})
        print(f"{name:18s} {entry['decode_tok_s']:6.2f} tok/s  prefill {entry['prefill_s']:.2f}s  "
              f"{entry['model_bytes'] / 2**20:7.1f} MiB  " + "  ".join(f"{k} {v:.4g}" for k, v in acc.items()),
              flush=True)
    base = result["variants"]["bf16"]
    for entry in result["variants"].values():
        entry["speedup_vs_bf16"] = round(entry["decode_tok_s"] / base["decode_tok_s"], 3)
        entry["bytes_saved_vs_bf16"] = base["model_bytes"] - entry["model_bytes"]
    result["contention_end"] = contention()
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_s']} s); contention start {start}, end {result['contention_end']}")
    return result


if __name__ == "__main__":
    main()
