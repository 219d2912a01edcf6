"""Shared pieces of the benchmark suite: machine description, timing, memory probes, model building, output.

Every benchmark compares our implementation with transformers' native InternVL in one process, on the same
random weights: the reference model is built from our InternVL3-1B preset config, filled with random values,
written with `save_pretrained`, and both implementations load that one directory. The checkpoint is made once
per suite run (`INTERNVL_BENCH_CKPT` points child processes at it) and deleted at exit unless it was given.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PRESET = "InternVL3-1B"
IMAGE_TOKEN_ID = 151667  # <IMG_CONTEXT> in the InternVL3 tokenizer
IMG_START_ID, IMG_END_ID = 151665, 151666  # <img>, </img>
THREADS = 2
CKPT_ENV = "INTERNVL_BENCH_CKPT"
# "1": every benchmark builds a few-layer, narrow model of the same shapes' kind (real vocabulary, 448px tiles,
# 256 tokens per tile) instead of InternVL3-1B: a smoke run of the harness in seconds, no meaningful speeds
SMOKE_ENV = "INTERNVL_BENCH_SMOKE"


# ---------------------------------------------------------------- environment

def setup(threads: int = THREADS) -> None:
    """Pin the thread count (the suite's numbers are for `threads` cores) and keep the output quiet."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _cpuinfo() -> dict:
    info: dict = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            info.setdefault("model", value)
        elif key == "flags":
            info.setdefault("flags", value.split())
        elif key == "cpu family":
            info.setdefault("family", value)
        elif key == "model":
            info.setdefault("model_number", value)
    return info


def machine_info() -> dict:
    """CPU model, cores, relevant ISA flags, memory, library versions and the thread setting in force."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", []))
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    import numpy
    import PIL
    return {
        "cpu": cpu.get("model", platform.processor() or "unknown"),
        "cpu_family": cpu.get("family"), "cpu_model_number": cpu.get("model_number"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags),
        "mem_total_gib": round(mem_total / 2**30, 1) if mem_total else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__, "transformers": tf_version, "numpy": numpy.__version__, "pillow": PIL.__version__,
        "platform": platform.platform(),
        **cpu_kind_info(),
    }


def cpu_kind_info() -> dict:
    """Which kind of CPU the numbers are for: `cpu_kind` "native avx512_bf16" or "emulated avx2" (an
    AVX-512 machine told not to use it, see `internvl.hardware.EMULATE_AVX2_ENV`), and the precision plan
    `internvl chat` picks there."""
    from internvl.hardware import cpu_kind
    from internvl.precision import choose_plan
    kind = cpu_kind()
    return {"cpu_kind": f"{'emulated' if kind.emulated else 'native'} {kind.kind}", "cpu_kind_source": kind.source,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "precision_auto": choose_plan("cpu").describe()}


def describe(info: dict) -> str:
    return (f"{info['cpu']} (family {info['cpu_family']}, model {info['cpu_model_number']}), CPU kind "
            f"{info['cpu_kind']} ({info['cpu_kind_source']}), "
            f"{info['usable_cpus']} cpus, {info['torch_threads']} torch threads, ISA {'/'.join(info['isa'])}, "
            f"{info['mem_total_gib']} GiB RAM | torch {info['torch']}, transformers {info['transformers']}, "
            f"python {info['python']}")


# ---------------------------------------------------------------- timing and memory

def measure(fn: Callable[[], object], warmup: int = 1, repeat: int = 5, max_seconds: float | None = None) -> dict:
    """Call `fn` `warmup` times untimed, then up to `repeat` timed times (fewer if `max_seconds` runs out,
    never fewer than 2 where the budget allows one more). Returns seconds: median, min, max and every run."""
    for _ in range(warmup):
        fn()
    runs: list[float] = []
    start = time.perf_counter()
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if max_seconds is not None and i >= 1 and spent + runs[-1] > max_seconds:
            break
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs), "runs": len(runs),
            "all_s": [round(r, 6) for r in runs]}


def measure_pair(fns: dict[str, Callable[[], object]], warmup: int = 1, repeat: int = 3) -> dict[str, dict]:
    """Time several implementations of the same thing with their runs interleaved (A B A B ...), so that
    background load on a shared machine hits all of them alike. Returns `measure`-style dicts by name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            runs[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs": len(v),
                "all_s": [round(r, 6) for r in v]} for k, v in runs.items()}


def cpu_contention(interval: float = 0.5) -> dict:
    """How busy the machine is with work that is not ours: load average, CPU pressure (PSI) and the share of
    CPU time other processes used over `interval` seconds while this one slept. Benchmarks on a shared
    machine are only comparable when this is near zero."""
    out: dict = {}
    try:
        out["loadavg_1m"] = float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        pass
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        out["psi_cpu_some_avg10"] = float(some[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass

    def busy() -> tuple[int, int]:
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals) - idle, sum(vals)

    try:
        b0, t0 = busy()
        time.sleep(interval)
        b1, t1 = busy()
        out["other_cpu_busy_frac"] = round((b1 - b0) / max(t1 - t0, 1), 3)
    except OSError:
        pass
    return out


def wait_quiet(max_wait: float, threshold: float = 0.1) -> dict:
    """Poll until other processes use less than `threshold` of the CPUs (over 2 s), at most `max_wait` s."""
    deadline = time.monotonic() + max_wait
    while True:
        c = cpu_contention(interval=2.0)
        if c.get("other_cpu_busy_frac", 0.0) < threshold or time.monotonic() >= deadline:
            return c
        log(f"waiting for a quiet machine: other processes use {c['other_cpu_busy_frac']:.0%} of the CPUs")
        time.sleep(3)


def run_section(fn: Callable[..., dict], *args, wait: float = 0.0, threshold: float = 0.1) -> dict:
    """Run one measurement section and record in it the CPU share other processes used meanwhile
    (`other_load`). With `wait` > 0: first wait (up to `wait` s) for a quiet machine, and measure once more
    (after waiting again) when the first attempt was disturbed; the less disturbed attempt is kept."""
    best: dict | None = None
    for attempt in range(2 if wait > 0 else 1):
        if wait > 0:
            wait_quiet(wait, threshold)
        meter = OtherLoad().start()
        out = fn(*args)
        out["other_load"] = meter.stop()
        if best is None or (out["other_load"] or 0) < (best["other_load"] or 0):
            best = out
        if (out["other_load"] or 0) <= threshold:
            break
        log(f"  note: other processes used {out['other_load']:.0%} of the CPUs during this measurement"
            + ("; measuring again" if wait > 0 and attempt == 0 else ""))
    return best


class OtherLoad:
    """The share of all CPUs that processes other than this one used between `start()` and `stop()`
    (from /proc/stat minus this process's own CPU time): 0 on a quiet machine, 1 when other work kept every
    CPU busy. Attach it to each measurement so a reader can tell clean numbers from contended ones."""

    def __init__(self) -> None:
        self._t0: tuple[int, int, int] | None = None

    @staticmethod
    def _snapshot() -> tuple[int, int, int]:
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        # fields after the command: state is index 0, so utime/stime (fields 14/15) are at 11/12
        return sum(vals) - vals[3] - vals[4], sum(vals), int(own[11]) + int(own[12])

    def start(self) -> OtherLoad:
        try:
            self._t0 = self._snapshot()
        except OSError:
            self._t0 = None
        return self

    def stop(self) -> float | None:
        if self._t0 is None:
            return None
        busy1, total1, own1 = self._snapshot()
        busy0, total0, own0 = self._t0
        return round(max(0.0, (busy1 - busy0) - (own1 - own0)) / max(total1 - total0, 1), 3)


def rss_bytes() -> int:
    """Resident set size of this process now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: write 5 to clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm_bytes() -> int:
    """The peak RSS as /proc reports it (honours `reset_peak_rss`, unlike getrusage)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return peak_rss_bytes()


# ---------------------------------------------------------------- models

def our_config():
    """Our InternVL3-1B config with the <IMG_CONTEXT> id the -hf layout needs (a narrow one in a smoke run)."""
    import dataclasses

    from internvl.presets import PRESETS
    cfg = PRESETS[PRESET].config.replace(image_token_id=IMAGE_TOKEN_ID)
    if os.environ.get(SMOKE_ENV) == "1":
        cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=128),
                          llm=dataclasses.replace(cfg.llm, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                  num_key_value_heads=1, intermediate_size=128))
    return cfg


def emulated_avx2_env() -> dict:
    """This process's environment plus what makes a child compute like an AVX2-only CPU (set before torch
    starts in it; see `internvl.hardware.EMULATE_AVX2_ENV`)."""
    from internvl.hardware import EMULATE_AVX2_ENV
    return {**os.environ, **EMULATE_AVX2_ENV}


def hf_config():
    """transformers' `InternVLConfig` for the same model, built from our config's -hf dict."""
    import transformers
    d = dict(our_config().to_hf())
    d.pop("architectures", None)
    d.pop("model_type", None)
    return transformers.InternVLConfig(**d)


@torch.no_grad()
def make_checkpoint(directory: str | os.PathLike, seed: int = 0, std: float = 0.02,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """Random transformers InternVL3-1B weights saved with `save_pretrained` (the -hf layout).

    Matrices and embeddings ~ N(0, std), biases 0, norm weights 1, layer scales at the config's init (0.1).
    The model is built on the meta device and given storage once, so no time goes into transformers' own
    initialisation that would be overwritten anyway.
    """
    import transformers
    cfg = hf_config()
    with torch.device("meta"):
        model = transformers.InternVLForConditionalGeneration(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    g = torch.Generator().manual_seed(seed)
    layer_scale = float(cfg.vision_config.layer_scale_init_value)
    for name, p in sorted(model.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("lambda_"):
            p.fill_(layer_scale)
        elif leaf == "bias":
            p.zero_()
        elif p.ndim == 1 and "norm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0.0, std, generator=g)
    directory = Path(directory)
    model.save_pretrained(directory)
    del model
    return directory


_TEMP_DIRS: list[str] = []


def _cleanup() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def get_checkpoint(verbose: bool = True) -> Path:
    """The shared random checkpoint: `$INTERNVL_BENCH_CKPT` when it holds one, else a fresh temporary one
    (deleted at exit; child processes started afterwards see it through the environment variable)."""
    given = os.environ.get(CKPT_ENV)
    if given and (Path(given) / "config.json").exists():
        return Path(given)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="internvl_bench_"))
    if not given:
        _TEMP_DIRS.append(str(directory))
    t0 = time.perf_counter()
    make_checkpoint(directory)
    if verbose:
        log(f"built random {PRESET} checkpoint (transformers save_pretrained, bf16) in {directory} "
            f"[{time.perf_counter() - t0:.1f}s]")
    os.environ[CKPT_ENV] = str(directory)
    return directory


def load_ours(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, precision=None):
    """Our model in `dtype`, or (`precision`, a `PrecisionPlan`) stored and computed as that plan says."""
    from internvl.checkpoint.loader import load_model
    model, _, _ = load_model(path, dtype=dtype if precision is None else precision.weights)
    model.precision = precision
    return model


def load_ref(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16):
    import transformers
    return transformers.InternVLForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()


def llm_decode_bytes(model, context_len: int = 0, batch: int = 1) -> dict:
    """Bytes one decode step must read from memory for our model's LLM: every decoder weight once, the LM
    head, `batch` embedding rows, and the KV cache of `context_len` positions per sequence."""
    lm = model.language_model
    elem = next(lm.parameters()).element_size()
    layer_bytes = sum(p.numel() * p.element_size() for p in lm.layers.parameters())
    head = lm.embed_tokens.weight if lm.lm_head is None else lm.lm_head.weight
    head_bytes = head.numel() * head.element_size()
    norm_bytes = sum(p.numel() * p.element_size() for p in lm.norm.parameters())
    embed_rows = batch * lm.embed_tokens.weight.shape[1] * elem
    cfg = lm.cfg
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.dim_per_head * elem * context_len * batch
    total = layer_bytes + head_bytes + norm_bytes + embed_rows + kv
    return {"layers": layer_bytes, "lm_head": head_bytes, "final_norm": norm_bytes, "embedding_rows": embed_rows,
            "kv_cache": kv, "total": total}


def memory_bandwidth(gib: float = 1.0, repeat: int = 5) -> dict:
    """Copy bandwidth with the suite's thread count: `dst.copy_(src)` of `gib` GiB, counting read + write.
    Also a read-only figure (a sum over the same buffer), closer to what decode does."""
    n = int(gib * 2**30)
    src = torch.ones(n, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages
    copy = measure(lambda: dst.copy_(src), warmup=1, repeat=repeat)
    as_f32 = src.view(torch.float32)
    read = measure(lambda: as_f32.sum(), warmup=1, repeat=repeat)
    del src, dst
    return {"buffer_bytes": n,
            "copy_gbps": 2 * n / copy["min_s"] / 1e9, "copy_gbps_median": 2 * n / copy["median_s"] / 1e9,
            "read_gbps": n / read["min_s"] / 1e9, "read_gbps_median": n / read["median_s"] / 1e9}


# ---------------------------------------------------------------- output

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ratio(ours: float | None, ref: float | None) -> float | None:
    if not ours or not ref:
        return None
    return ours / ref


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def table(title: str, headers: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths)), line]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join(out)


def write_results(name: str, data: dict) -> Path:
    """results/NAME.json; NAME_avx2.json on an emulated AVX2 CPU, NAME_smoke.json in a smoke run (never
    overwriting a real run's file)."""
    from internvl.hardware import cpu_kind
    kind = cpu_kind()
    if kind.emulated and kind.kind == "avx2":
        name += "_avx2"
    if os.environ.get(SMOKE_ENV) == "1":
        name += "_smoke"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def finish(name: str, r: dict, report) -> dict:
    """Close a benchmark: record the contention at the end, write results/NAME.json, print the report."""
    r["contention_end"] = cpu_contention()
    path = write_results(name, r)
    print(report(r))
    print(f"wrote {path}")
    return r
