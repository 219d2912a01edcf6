"""`internvl serve` under load: throughput and p50/p99 latency with 1, 4, 8 and 16 concurrent streaming clients.

    python -m benchmarks.bench_serve [--max-tokens 64] [--rounds 2] [--levels 1,4,8,16] [--wait-quiet SECONDS]

One server process (`python -m internvl serve`, bf16 where the CPU has it, `--max-batch 16`) serves random
InternVL3-1B weights (InternViT-300M + Qwen2.5-0.5B shapes, our preset, `init_weights(0.02)`) with the
byte-level test tokenizer: the model's real cost per token, text that means nothing. The baseline is
sequential single requests (one client, each request sent when the previous one finished); each level then
runs N clients at once, each sending `--rounds` requests back to back, every request a different greedy
text prompt with a short system message and `max_tokens` answer tokens (`stream`, `include_usage`).
Throughput counts generated tokens per second of wall time; latency is per request (send -> [DONE]); TTFT
is send -> first content chunk. `other_load` is the CPU share used by processes other than this benchmark
and its server. For reference, the same requests also run through an `Engine` in this process with no HTTP
(`engine_only_*`, in waves of N submitted together): the batching speedup the engine itself allows on this
machine, and how much of it the server keeps. Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402
from benchmarks import servers as S  # noqa: E402

TARGET_SPEEDUP_AT_8 = 4.0
SYSTEM = "You are a helpful assistant."


def body(i: int, max_tokens: int) -> dict:
    question = f"Request {i}: describe a city at night in detail, " + "please " * (i % 7)
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}


async def one_request(http, base: str, i: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, tokens, prompt = None, 0, 0
    async with http.stream("POST", base + "/v1/chat/completions", json=body(i, max_tokens)) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens, prompt = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
    end = time.perf_counter()
    return {"latency_s": end - t0, "ttft_s": (first or end) - t0, "tokens": tokens, "prompt_tokens": prompt}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_level(base: str, clients: int, rounds: int, max_tokens: int, start: int) -> dict:
    import httpx

    async def client(c: int, http) -> list[dict]:
        return [await one_request(http, base, start + c * rounds + k, max_tokens) for k in range(rounds)]

    async def everyone() -> tuple[list[dict], float]:
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(client(c, http) for c in range(clients)))
            return [r for rs in results for r in rs], time.perf_counter() - t0

    reqs, wall = asyncio.run(everyone())
    lat, ttft = [r["latency_s"] for r in reqs], [r["ttft_s"] for r in reqs]
    tokens = sum(r["tokens"] for r in reqs)
    return {"clients": clients, "requests": len(reqs), "wall_s": round(wall, 3), "completion_tokens": tokens,
            "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in reqs),
            "tokens_per_s": tokens / wall, "requests_per_s": len(reqs) / wall,
            "latency_p50_s": percentile(lat, 50), "latency_p99_s": percentile(lat, 99),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99)}


def engine_only(ckpt: Path, names: list[tuple[str, int, int]], max_tokens: int) -> dict:
    """The same requests through an Engine in this process, no HTTP and no server thread: what the server's
    engine could do at best. Each level runs its requests in waves of `clients` submitted together."""
    from internvl.chat import from_pretrained
    from internvl.engine.engine import Engine
    from internvl.serve.config import ServeConfig
    from internvl.serve.messages import to_conversation
    from internvl.serve.prompting import Prompter, stop_token_ids
    from internvl.serve.protocol import parse_request
    model, tok = from_pretrained(ckpt)  # the server's default dtype
    engine = Engine(model, decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
                    eos_token_ids=stop_token_ids(model.config.template, tok), max_batch=16)
    prompter = Prompter(model, tok, ServeConfig(model=str(ckpt)), engine.max_len)

    def prepared(i: int):
        req = parse_request(body(i, max_tokens))
        p = prompter.prepare(req, to_conversation(req.messages))
        return p.prompt_ids, None, p.params[0]

    engine.generate([prepared(10_000)])  # warm-up
    out = {}
    for k, (name, clients, rounds) in enumerate(names):
        waves = rounds if name != "sequential" else 1
        per_wave = clients if name != "sequential" else rounds
        t0, tokens = time.perf_counter(), 0
        for w in range(waves):
            batch = [prepared(1000 * k + w * per_wave + c) for c in range(per_wave)]
            if name == "sequential":
                seqs = [s for r in batch for s in engine.generate([r])]
            else:
                seqs = engine.generate(batch)
            tokens += sum(len(s.output_ids) for s in seqs)
        out[name] = tokens / (time.perf_counter() - t0)
        C.log(f"  engine only {name:>10}: {out[name]:.1f} tok/s")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="requests each client sends, one after another")
    ap.add_argument("--sequential", type=int, default=6, help="requests in the sequential baseline")
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--no-engine-only", action="store_true", help="skip the in-process engine reference")
    args = ap.parse_args(argv)
    C.setup()
    levels = [int(x) for x in args.levels.split(",")]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="internvl_bench_serve_") as tmp:
        t0 = time.perf_counter()
        ckpt = S.build_checkpoint(Path(tmp) / C.PRESET, C.PRESET)
        C.log(f"built random {C.PRESET} checkpoint with the byte tokenizer [{time.perf_counter() - t0:.1f}s]")
        proc, base = S.start(["--model", str(ckpt), "--max-batch", str(args.max_batch), "--max-queue", "64"],
                             timeout=300)
        try:
            run_level(base, 1, 2, 8, start=10_000)  # warm-up: first-call costs out of the numbers
            results: dict = {}
            names = [("sequential", 1, args.sequential)] + [(str(n), n, args.rounds) for n in levels]
            for k, (name, clients, rounds) in enumerate(names):
                if args.wait_quiet > 0:
                    C.wait_quiet(args.wait_quiet)
                meter = S.ServersLoad([proc.pid]).start()
                results[name] = run_level(base, clients, rounds, args.max_tokens, start=1000 * k)
                results[name]["other_load"] = meter.stop()
                C.log(f"  {name:>10}: {results[name]['tokens_per_s']:.1f} tok/s, "
                      f"p50 {results[name]['latency_p50_s']:.2f}s, p99 {results[name]['latency_p99_s']:.2f}s")
        finally:
            S.stop([proc])
        if not args.no_engine_only:
            if args.wait_quiet > 0:
                C.wait_quiet(args.wait_quiet)
            meter = C.OtherLoad().start()
            ceiling = engine_only(ckpt, names, args.max_tokens)
            ceiling_load = meter.stop()
    base_tps = results["sequential"]["tokens_per_s"]
    for name, r in results.items():
        r["speedup_vs_sequential"] = r["tokens_per_s"] / base_tps
        if not args.no_engine_only:
            r["engine_only_tokens_per_s"] = ceiling[name]
            r["engine_only_speedup_vs_sequential"] = ceiling[name] / ceiling["sequential"]
            r["server_vs_engine_only"] = r["tokens_per_s"] / ceiling[name]
    at8 = results.get("8", {}).get("speedup_vs_sequential")
    out = {"machine": C.machine_info(), "preset": C.PRESET, "server": {"max_batch": args.max_batch,
           "dtype": "auto"}, "max_tokens": args.max_tokens,
           "rounds_per_client": args.rounds, "levels": results,
           "engine_only_other_load": None if args.no_engine_only else ceiling_load,
           "target": {"speedup_at_8_clients": TARGET_SPEEDUP_AT_8},
           "target_met": {"speedup_at_8_clients": at8 is not None and at8 >= TARGET_SPEEDUP_AT_8},
           "wall_s": round(time.perf_counter() - t_start, 1)}
    rows = [[name, r["clients"], r["requests"], r["tokens_per_s"], r["speedup_vs_sequential"], r["latency_p50_s"],
             r["latency_p99_s"], r["ttft_p50_s"], r["ttft_p99_s"], r["other_load"],
             r.get("engine_only_tokens_per_s"), r.get("engine_only_speedup_vs_sequential")]
            for name, r in results.items()]
    print(C.table(f"internvl serve, {C.PRESET} random weights, {args.max_tokens} answer tokens per request",
                  ["clients", "n", "requests", "tok/s", "x seq", "p50 s", "p99 s", "ttft p50", "ttft p99",
                   "other", "engine tok/s", "engine x seq"], rows))
    print(f"target: >= {TARGET_SPEEDUP_AT_8}x sequential throughput at 8 clients: "
          f"{'met' if out['target_met']['speedup_at_8_clients'] else 'NOT met'} ({C.fmt(at8)}x)")
    C.log(f"wrote {C.write_results('serve', out)}")
    return out


if __name__ == "__main__":
    main()
