"""Where does a decode step of ours spend its time? (diagnostic, not part of run_all)

    python -m benchmarks.profile_decode [--batch 1] [--steps 16] [--dtype bf16|fp32]

Three views of the same engine decode steps on the random InternVL3-1B checkpoint:
  1. plain wall time per step;
  2. inclusive time per part of the model (perf_counter around modules and engine functions via hooks and
     wrappers installed in this process only), summed over layers, and the rest of the step as "other"
     (hooks keep a step on the module path: the fused layer kernel, kernels/layer.c, is not in this view);
  3. torch.profiler's top aten ops by self CPU time, and the share of the step no op accounts for
     (Python, module call and dispatch overhead).
Also times the decode-shaped matrix-vector products alone (F.linear, M = batch) against the copy bandwidth.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402


def _prompts(batch: int, length: int = 32) -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    return [torch.randint(1000, 150000, (length - i,), generator=g).tolist() for i in range(batch)]


def run_steps(engine, prompts, steps: int, after_prefill=None) -> list[float]:
    """Prefill `prompts` (untimed), call `after_prefill`, then time `steps` decode steps individually."""
    from internvl.engine.sampling import SamplingParams
    seqs = [engine.submit(p, None, SamplingParams(max_new_tokens=steps + 1)) for p in prompts]
    engine.step()  # prefill
    if after_prefill is not None:
        after_prefill()
    times = []
    while engine.has_work():
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    assert all(len(s.output_ids) == steps + 1 for s in seqs)
    return times


class PartTimer:
    """Inclusive perf_counter time per named part, installed with hooks/wrappers on one model + engine."""

    def __init__(self) -> None:
        self.total: dict[str, float] = collections.defaultdict(float)
        self._start: dict[int, float] = {}
        self._undo = []

    def _hook(self, module, name: str) -> None:
        def pre(mod, args):
            self._start[id(mod)] = time.perf_counter()

        def post(mod, args, out):
            self.total[name] += time.perf_counter() - self._start.pop(id(mod))

        self._undo += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def _wrap(self, obj, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        def wrapped(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[name] += time.perf_counter() - t0

        setattr(obj, attr, wrapped)
        self._undo.append(_Restore(obj, attr, fn))

    def install(self, engine) -> None:
        from internvl.engine import kv_cache
        lm = engine.model.language_model
        for layer in lm.layers:
            a = layer.self_attn
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                self._hook(getattr(a, n), f"linear {n}")
            for n in ("gate_proj", "up_proj", "down_proj"):
                self._hook(getattr(layer.mlp, n), f"linear {n}")
            self._hook(layer.input_layernorm, "rmsnorm")
            self._hook(layer.post_attention_layernorm, "rmsnorm")
            self._hook(a, "attention block (incl. its 4 linears)")
            self._hook(layer.mlp, "mlp block (incl. its 3 linears)")
        self._hook(lm.norm, "rmsnorm")
        self._hook(lm.rotary, "rotary tables")
        self._hook(lm.embed_tokens, "embedding")
        self._wrap(lm, "logits", "lm head")
        self._wrap(kv_cache.StepView, "update", "kv cache update")
        self._wrap(engine, "_sample", "sampling + bookkeeping")
        self._wrap(engine.cache, "step", "cache.step (view setup)")

    def remove(self) -> None:
        for u in reversed(self._undo):
            u.remove()
        self._undo.clear()


class _Restore:
    def __init__(self, obj, attr, fn) -> None:
        self.obj, self.attr, self.fn = obj, attr, fn

    def remove(self) -> None:
        if isinstance(self.obj, type):
            setattr(self.obj, self.attr, self.fn)
        else:
            delattr(self.obj, self.attr) if self.attr in vars(self.obj) else None


def linear_alone(model, batch: int, repeat: int = 20) -> dict:
    """The decode step's matrix products alone: F.linear with M = batch on every decoder weight and the head."""
    lm = model.language_model
    ws = [m.weight for layer in lm.layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                      layer.self_attn.v_proj, layer.self_attn.o_proj,
                                                      layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
    head = lm.embed_tokens.weight if lm.lm_head is None else lm.lm_head.weight
    dtype = ws[0].dtype
    xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=dtype) for w in ws}

    def layers():
        for w in ws:
            F.linear(xs[w.shape[1]], w)

    def lm_head():
        F.linear(xs[head.shape[1]], head)

    t_layers = C.measure(layers, warmup=2, repeat=repeat)["median_s"]
    t_head = C.measure(lm_head, warmup=2, repeat=repeat)["median_s"]
    b_layers = sum(w.numel() * w.element_size() for w in ws)
    b_head = head.numel() * head.element_size()
    return {"decoder_linears_ms": t_layers * 1e3, "decoder_linears_gbps": b_layers / t_layers / 1e9,
            "lm_head_ms": t_head * 1e3, "lm_head_gbps": b_head / t_head / 1e9}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--no-mkldnn", action="store_true",
                    help="disable oneDNN for the whole run (bf16 matmuls then use ATen's own kernels; for M=1 "
                         "that is a much faster GEMV on this CPU, for M>1 a much slower GEMM)")
    args = ap.parse_args(argv)
    C.setup()
    if args.no_mkldnn:
        torch._C._set_mkldnn_enabled(False)
    from internvl.engine.engine import Engine
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = C.load_ours(C.get_checkpoint(), dtype)
    engine = Engine(model, max_batch=max(args.batch, 1), max_len=256)
    prompts = _prompts(args.batch)
    print(f"contention: {C.wait_quiet(args.wait_quiet) if args.wait_quiet else C.cpu_contention()}")
    meter = C.OtherLoad().start()
    run_steps(engine, prompts, 4)  # warm-up

    wall = run_steps(engine, prompts, args.steps)
    step = statistics.median(wall)
    print(f"\n1. wall time per decode step, batch {args.batch}, {args.dtype}, oneDNN "
          f"{'on' if torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled() else 'off'}: median {step * 1e3:.1f} ms "
          f"(min {min(wall) * 1e3:.1f}, max {max(wall) * 1e3:.1f}) -> {args.batch / step:.2f} tok/s")

    timer = PartTimer()
    timer.install(engine)
    t_wall = sum(run_steps(engine, prompts, args.steps, after_prefill=timer.total.clear))
    timer.remove()
    parts = dict(timer.total)
    linears = sum(v for k, v in parts.items() if k.startswith("linear"))
    attn_core = parts.get("attention block (incl. its 4 linears)", 0) - sum(
        parts.get(f"linear {n}", 0) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) - parts.get(
        "kv cache update", 0)
    mlp_act = parts.get("mlp block (incl. its 3 linears)", 0) - sum(
        parts.get(f"linear {n}", 0) for n in ("gate_proj", "up_proj", "down_proj"))
    rows = [[k, v / args.steps * 1e3, v / t_wall] for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
            if "block" not in k]
    rows += [["attention core (rotary apply, GQA expand, SDPA, reshapes)", attn_core / args.steps * 1e3,
              attn_core / t_wall],
             ["mlp activation (silu * up)", mlp_act / args.steps * 1e3, mlp_act / t_wall]]
    accounted = linears + parts.get("lm head", 0) + parts.get("rmsnorm", 0) + parts.get("rotary tables", 0) + \
        parts.get("embedding", 0) + parts.get("kv cache update", 0) + parts.get("sampling + bookkeeping", 0) + \
        parts.get("cache.step (view setup)", 0) + attn_core + mlp_act
    rows.append(["other (layer loop, residual adds, engine, hooks)", (t_wall - accounted) / args.steps * 1e3,
                 (t_wall - accounted) / t_wall])
    rows.sort(key=lambda r: -r[1])
    print()
    print(C.table(f"2. inclusive time per part (with hooks: {t_wall / args.steps * 1e3:.1f} ms/step)",
                  ["part", "ms/step", "share"], rows))

    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU])
    t_prof = sum(run_steps(engine, prompts, args.steps, after_prefill=prof.start))
    prof.stop()
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    self_total = sum(e.self_cpu_time_total for e in events) / 1e6
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"3. profiled wall {t_prof * 1e3 / args.steps:.1f} ms/step; aten self time accounts for "
          f"{self_total / t_prof:.0%}, the rest ({(t_prof - self_total) * 1e3 / args.steps:.1f} ms/step) is "
          f"Python / module-call / dispatch overhead outside ops (profiler overhead included)")
    ops = sum(1 for e in prof.events() if e.cpu_parent is None) / args.steps
    print(f"   top-level aten ops per step: {ops:.0f}")

    print(f"\n4. the step's matrix products alone (F.linear, M={args.batch}), by thread count:")
    for threads in (1, C.THREADS):
        torch.set_num_threads(threads)
        la = linear_alone(model, args.batch)
        bw = C.memory_bandwidth(repeat=3)
        print(f"   {threads} thread(s): decoder linears {la['decoder_linears_ms']:.1f} ms "
              f"({la['decoder_linears_gbps']:.1f} GB/s), LM head {la['lm_head_ms']:.1f} ms "
              f"({la['lm_head_gbps']:.1f} GB/s); copy bandwidth {bw['copy_gbps']:.1f} GB/s (read+write), "
              f"read {bw['read_gbps']:.1f} GB/s")
    torch.set_num_threads(C.THREADS)


    print(f"\nother processes used {meter.stop():.0%} of the CPUs during these measurements")


if __name__ == "__main__":
    main()
