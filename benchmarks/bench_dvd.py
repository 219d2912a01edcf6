"""DvD under an image-heavy concurrent load: request throughput of the monolithic server, of DvD (a vision
server + a language server), and of both with the Flash router (ViR), on one machine.

    python -m benchmarks.bench_dvd [--preset InternVL3_5-1B] [--requests 16] [--clients 8] [--tiles 6]
                                   [--max-tokens 32] [--modes mono,dvd,mono-vir,dvd-vir] [--wait-quiet SECONDS]
    python -m benchmarks.bench_dvd --smoke      # tiny-random weights, a few requests: checks the plumbing only

One random checkpoint (the preset's shapes, plus the Flash modules: mlp2 and a random router with
relative threshold 0.5, so about half of a request's tiles are compressed) serves every mode, so the
weights are the same; `--vir off` turns routing off for `mono` and `dvd`. Every server is a subprocess
(`python -m internvl serve`, bf16 where the CPU has it); `dvd` runs `--role vision` and
`--role language --vision-url` side by side. `--clients` clients send `--requests` non-streaming requests
in all, each with one image of `--tiles` tiles (plus the thumbnail) and a different question, greedy,
`--max-tokens` answer tokens. Throughput is requests per second of wall time; latency is per request.

On one machine the two DvD servers share the CPU cores, so DvD cannot gain what the paper reports for
separate GPUs (its 4.05x is 38B at 896px with ViR on 8 A100s, InternVL3.5 Table 18); this measures what
the decoupling costs and the pipelining gives here. Writes benchmarks/results/dvd.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import io
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

MODES = ("mono", "dvd", "mono-vir", "dvd-vir")


def image_uri(i: int, tiles: int, size: int) -> str:
    """A PNG whose aspect ratio tiles into `tiles` x 1 (different pixels per request)."""
    import base64

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 256, (size // 4, tiles * size // 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((tiles * size, size)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ok(response) -> None:
    """Raise with the server's own message: a bare status code hides why (e.g. which engine error)."""
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}: {response.text[:1000]}")


def chat_body(image: str, text: str, max_tokens: int) -> dict:
    """A greedy chat request with one image and a question (what every load and stage timing sends)."""
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                      {"type": "text", "text": text}]}],
            "max_tokens": max_tokens, "temperature": 0}


def run_load(base: str, images: list[str], clients: int, max_tokens: int) -> dict:
    import httpx

    async def one(http, i: int) -> float:
        t0 = time.perf_counter()
        r = await http.post(base + "/v1/chat/completions",
                            json=chat_body(images[i], f"Question {i}: describe it.", max_tokens))
        ok(r)
        return time.perf_counter() - t0

    async def everyone() -> tuple[list[float], float]:
        queue = list(range(len(images)))

        async def client(http) -> list[float]:
            out = []
            while queue:
                out.append(await one(http, queue.pop(0)))
            return out
        async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=clients + 4)) as http:
            t0 = time.perf_counter()
            done = await asyncio.gather(*(client(http) for _ in range(clients)))
            return [x for xs in done for x in xs], time.perf_counter() - t0

    latencies, wall = asyncio.run(everyone())
    return {"requests": len(latencies), "wall_s": round(wall, 3), "requests_per_s": len(latencies) / wall,
            "latency_p50_s": statistics.median(latencies), "latency_max_s": max(latencies)}


def tiles_of(uri: str, config):
    """The tiles the servers cut from a data-URI image (what a language server sends the vision server)."""
    import base64

    from internvl.processing.image import load_question_images
    return load_question_images([base64.b64decode(uri.split(",", 1)[1])], config)[0]


def metric(base: str, name: str) -> float | None:
    import httpx
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f"internvl_{name} "):
            return float(line.split()[1])
    return None


def timed_post(url: str, repeat: int = 3, **kw) -> float:
    """Median seconds of `repeat` identical POSTs (one at a time, nothing else in flight)."""
    import httpx
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ok(httpx.post(url, timeout=3600, **kw))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_stream(base: str, body: dict) -> tuple[float, float]:
    """One streamed request: (seconds to its first content chunk, seconds per further answer token).

    Both come from the same request, so decode is not a difference of two noisy totals (which went negative
    on a small model); the token count is the server's own (usage), as a chunk may carry several tokens."""
    import httpx
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=3600) as r:
        if r.status_code >= 400:
            r.read()
            ok(r)
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                last = time.perf_counter()
                first = first or last
    if first is None or tokens < 2:
        raise RuntimeError(f"streamed answer of {tokens} token(s): cannot time decode")
    return first - t0, (last - first) / (tokens - 1)


def stage_costs(base: str, vision: str | None, image: str, tiles, max_tokens: int, repeat: int = 3) -> dict:
    """One request alone on an idle server, stage by stage: the vision server's encode of its tiles (DvD
    modes), the time to the first answer token (vision + prefill, over the wire in DvD) and per further token
    (decode at batch 1); medians of `repeat`. What the multi-machine analysis in docs/dvd.md builds on."""
    from internvl.serve.wire import ENCODE_PATH, MEDIA_TYPE, pack_tiles

    runs = [timed_stream(base, chat_body(image, "Describe it.", max(2, max_tokens))) for _ in range(repeat)]
    first = statistics.median(r[0] for r in runs)
    out = {"first_token_s": first, "decode_s_per_token": statistics.median(r[1] for r in runs)}
    if vision is not None:
        out["vision_encode_s"] = timed_post(vision + ENCODE_PATH, repeat, content=pack_tiles(tiles.bfloat16()),
                                            headers={"Content-Type": MEDIA_TYPE})
        out["prefill_and_transfer_s"] = first - out["vision_encode_s"]
    return out


def multi_machine(mono: dict, dvd: dict, answer_tokens: int, vision_servers: int) -> dict:
    """Requests per second one request at a time (batch 1) on separate machines, from stages measured alone.

    Monolithic: one machine does everything, so a request costs first_token + (n-1) decode. DvD: the vision
    servers encode side by side while the language server prefills and decodes, so the slower side sets the
    pace: min(k / encode, 1 / (prefill_and_transfer + (n-1) decode)). Batching raises both, the language
    side more (decode is memory-bound); this is the pipelining's share alone."""
    decode = (answer_tokens - 1) * dvd["decode_s_per_token"]
    mono_rps = 1 / (mono["first_token_s"] + (answer_tokens - 1) * mono["decode_s_per_token"])
    return paced(vision_servers, mono_rps, vision_servers / dvd["vision_encode_s"],
                 1 / (dvd["prefill_and_transfer_s"] + decode))


def multi_machine_from_load(mono: dict, dvd: dict, cores: int, vision_servers: int) -> dict:
    """The same estimate from where the CPU went under the concurrent load (batching included): each side's
    CPU seconds per request, spread over `cores` cores of a machine of its own, against the monolithic run's
    own CPU seconds per request on the same cores."""
    cpu = dvd["cpu_s_per_request"]
    return paced(vision_servers, cores / mono["cpu_s_per_request"]["all"],
                 vision_servers * cores / cpu["vision"], cores / cpu["language"])


def paced(vision_servers: int, mono_rps: float, vision_rps: float, language_rps: float) -> dict:
    """A two-stage pipeline runs at its slower stage's rate; that rate against the monolithic server's."""
    rps = min(vision_rps, language_rps)
    return {"vision_servers": vision_servers, "requests_per_s": rps, "vs_mono": rps / mono_rps,
            "bound": "vision" if vision_rps < language_rps else "language"}


def run_mode(mode: str, ckpt: Path, args, images: list[str]) -> dict:
    common = ["--model", str(ckpt), "--vir", "auto" if mode.endswith("vir") else "off"]
    serving = [*common, "--max-batch", str(args.max_batch), "--max-queue", "256"]
    procs = []
    try:
        vision = None
        if mode.startswith("dvd"):
            proc, vision = S.start([*common, "--role", "vision"])
            procs.append(proc)
            # the timeout covers the vision server's queue too: 8 clients' tiles take minutes on 2 cores
            proc, base = S.start([*serving, "--role", "language", "--vision-url", vision,
                                  "--vision-timeout", "3600"])
        else:
            proc, base = S.start(serving)
        procs.append(proc)
        run_load(base, images[:2], 2, 2)  # warm-up: first-call costs out of the numbers
        stages = stage_costs(base, vision, images[0], args.tiles_tensor, args.max_tokens) if args.stages else None
        meter = S.ServersLoad([p.pid for p in procs]).start()
        result = run_load(base, images[2:], args.clients, args.max_tokens)
        result["other_load"] = meter.stop()
        # where the CPU went under load: on separate machines each side would have its own cores
        result["cpu_s_per_request"] = dict(zip(("vision", "language") if vision else ("all",),
                                               (round(c / result["requests"], 3) for c in meter.cpu_seconds())))
        if stages is not None:
            result["stages"] = stages
        if vision is not None:
            batches, tiles = metric(vision, "encode_batches_total"), metric(vision, "encoded_tiles_total")
            result["vision_tiles_per_forward"] = tiles / batches if batches else None
        return result
    except Exception as e:  # a server that failed says why (its log), not only the client's status code
        raise RuntimeError(f"{mode}: {e}\n" + "\n".join(S.log_tail(p) for p in procs)) from e
    finally:
        S.stop(procs)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="InternVL3_5-1B")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=6, help="tiles per image (a thumbnail is added)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--no-stages", dest="stages", action="store_false",
                    help="skip the per-stage costs (one request alone, before each load)")
    ap.add_argument("--smoke", action="store_true", help="tiny-random weights, 4 requests: the plumbing only")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/dvd.json; "
                                                "--smoke writes nothing unless given)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.requests, args.clients, args.max_tokens = "tiny-random", 4, 4, 4
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    C.setup()
    from internvl.presets import PRESETS
    size = PRESETS[args.preset].config.image_size
    images = [image_uri(i, args.tiles, size) for i in range(args.requests + 2)]
    args.tiles_tensor = tiles_of(images[0], PRESETS[args.preset].config)
    t_start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="internvl_bench_dvd_") as tmp:
        t0 = time.perf_counter()
        ckpt = S.build_checkpoint(Path(tmp) / args.preset, args.preset, flash_mode=True,
                                  flash_relative_threshold=0.5, flash_absolute_threshold=0.0)
        C.log(f"built random {args.preset} (+Flash) checkpoint [{time.perf_counter() - t0:.1f}s]")
        for mode in modes:
            if args.wait_quiet > 0:
                C.wait_quiet(args.wait_quiet)
            results[mode] = run_mode(mode, ckpt, args, images)
            C.log(f"  {mode:>9}: {results[mode]['requests_per_s']:.3f} req/s, p50 {results[mode]['latency_p50_s']:.2f}s")
    base = results.get("mono", {}).get("requests_per_s")
    for r in results.values():
        r["vs_mono"] = r["requests_per_s"] / base if base else None
    estimates, from_load, cores = {}, {}, C.machine_info()["usable_cpus"]
    mono = results.get("mono")
    for dvd in ("dvd", "dvd-vir"):  # both against plain monolithic serving, as the paper's Table 18
        if mono is None or dvd not in results:
            continue
        if "stages" in mono and "stages" in results[dvd]:
            estimates[dvd] = [multi_machine(mono["stages"], results[dvd]["stages"], args.max_tokens, k)
                              for k in (1, 2, 4, 8)]
        from_load[dvd] = [multi_machine_from_load(mono, results[dvd], cores, k) for k in (1, 2, 4, 8)]
    out = {"machine": C.machine_info(), "preset": args.preset, "tiles_per_image": args.tiles + 1,
           "requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens,
           "max_batch": args.max_batch, "modes": results, "multi_machine_batch1": estimates,
           "multi_machine_from_load": from_load, "wall_s": round(time.perf_counter() - t_start, 1)}
    print(C.table(f"DvD, {args.preset} random weights, {args.requests} requests of {args.tiles + 1} tiles, "
                  f"{args.clients} clients, {args.max_tokens} answer tokens",
                  ["mode", "req/s", "x mono", "p50 s", "max s", "tiles/forward", "other"],
                  [[m, r["requests_per_s"], r["vs_mono"], r["latency_p50_s"], r["latency_max_s"],
                    r.get("vision_tiles_per_forward"), r["other_load"]] for m, r in results.items()]))
    for m, r in results.items():
        if "stages" in r:
            print(f"  {m:>9} alone: " + ", ".join(f"{k} {v:.4f}" for k, v in r["stages"].items()))
    for (m, rows), how in [*((x, "batch 1") for x in estimates.items()),
                           *((x, "from load") for x in from_load.items())]:
        print(f"  {m:>9} on separate machines, {how}: " + "; ".join(
            f"{e['vision_servers']} vision -> {e['requests_per_s']:.3f} req/s ({e['vs_mono']:.2f}x, {e['bound']}-bound)"
            for e in rows))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
        C.log(f"wrote {args.out}")
    elif not args.smoke:
        C.log(f"wrote {C.write_results('dvd', out)}")
    return out


if __name__ == "__main__":
    main()
