"""Pieces of the training benchmarks (`bench_sft`, `bench_mpo`): their small random model, long-tailed synthetic
samples, the shared command line, and throughput read from the trainer's own metrics over alternating runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from benchmarks import common as C

WORDS = ("the red circle sits left of a blue square while green lines cross the yellow field near "
         "seven small dots and one large triangle").split()


def bench_config():
    """tiny-random's vision tower (112px tiles, 16 tokens each) with a 4-layer, 256-wide LLM (~3M parameters)."""
    from internvl.presets import PRESETS
    base = PRESETS["tiny-random"].config
    llm = dataclasses.replace(base.llm, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2)
    return base.replace(llm=llm, max_dynamic_patch=4)


def make_checkpoint(root: Path) -> tuple[Path, int]:
    """`bench_config` with random weights and the byte-level tokenizer under root/model -> (path, parameters)."""
    from internvl.checkpoint.loader import save_checkpoint
    from internvl.models.internvl import InternVL
    from internvl.processing.tokenizer import byte_tokenizer
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = InternVL(bench_config().replace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>")))
    model.init_weights()
    path = save_checkpoint(model, root / "model", "official")
    tok.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


def answer(rng: random.Random) -> str:
    """A long-tailed answer: lognormal word count (median ~33 words, capped at 600), so samples' median is ~400
    tokens (byte-level tokenizer) and the longest reach the benchmarks' default --max-packed-tokens."""
    words = min(600, max(3, int(rng.lognormvariate(3.5, 1.0))))
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def maybe_image(rng: random.Random, root: Path, i: int) -> str | None:
    """For a third of the samples, a 112-336 x 112 image (1-3 tiles) saved under root -> its file name."""
    if rng.random() >= 1 / 3:
        return None
    w = rng.choice((112, 224, 336))
    img = Image.new("RGB", (w, 112), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    ImageDraw.Draw(img).ellipse((10, 10, 90, 90), fill="white")
    img.save(root / f"img{i}.png")
    return f"img{i}.png"


def write_dataset(root: Path, name: str, records: list[dict], meta_name: str) -> Path:
    """records as root/NAME.jsonl and a meta file root/META_NAME naming it `name` -> the meta file."""
    (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    meta = root / meta_name
    meta.write_text(json.dumps({name: {"root": str(root), "annotation": str(root / f"{name}.jsonl"),
                                       "repeat_time": 1}}))
    return meta


def parser(description: str, batch_help: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=8, help=batch_help)
    ap.add_argument("--max-packed-tokens", type=int, default=2048, help="also the longest sample")
    ap.add_argument("--repeat", type=int, default=2, help="runs per mode (alternating)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    return ap


def begin(args: argparse.Namespace) -> dict:
    """Set the process up for a training benchmark -> the start of its result record."""
    C.setup()
    import logging
    logging.getLogger("internvl").setLevel(logging.WARNING)
    r: dict = {"machine": C.machine_info(), "threads": C.THREADS, "device": args.device, "bf16": args.bf16,
               "settings": {k: v for k, v in vars(args).items() if k != "wait_quiet"},
               "contention_start": C.cpu_contention()}
    if args.device == "cuda":
        r["gpu"] = torch.cuda.get_device_name(0)
    return r


def train_and_measure(args: argparse.Namespace, ckpt: Path, meta: Path, out: Path, **config) -> tuple[dict, list]:
    """`internvl train` (packed unless `config` says otherwise) for --warmup + --steps steps -> (its throughput
    after the warm-up, every step's metrics row). Throughput: real tokens per second of step wall time."""
    from internvl.train.args import TrainConfig
    from internvl.train.metrics import read_metrics
    from internvl.train.trainer import train
    cfg = TrainConfig(**{
        "model": str(ckpt), "meta_path": str(meta), "output_dir": str(out), "max_steps": args.warmup + args.steps,
        "per_device_batch_size": args.batch, "packed": True, "max_packed_tokens": args.max_packed_tokens,
        "max_seq_length": args.max_packed_tokens, "save_steps": 0, "progress": False, "seed": 0,
        "device": args.device, "bf16": args.bf16, **config})
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    rows = read_metrics(out / "metrics.jsonl")
    timed = rows[args.warmup:]
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "samples_per_s": sum(r["samples"] for r in timed) / seconds, "run_wall_seconds": wall}, rows


def alternating_runs(bench: str, modes: tuple[str, ...], repeat: int, root: Path,
                     run: Callable[[str, Path], dict]) -> dict[str, list[dict]]:
    """`repeat` rounds of `run(mode, fresh output folder)` over every mode in turn (A B A B), so background
    load hits all modes alike -> each mode's results."""
    runs: dict = {m: [] for m in modes}
    for i in range(repeat):
        for mode in modes:
            C.log(f"{bench}: {mode} run {i + 1}/{repeat}")
            out = Path(tempfile.mkdtemp(prefix=f"{mode}{i}-", dir=root))  # fresh: sections may re-run
            runs[mode].append(run(mode, out))
    return runs


def best_and_median(runs: dict[str, list[dict]]) -> tuple[dict[str, float], dict[str, float]]:
    """Each mode's best and median tokens/s over its runs."""
    return ({m: max(x["tokens_per_s"] for x in v) for m, v in runs.items()},
            {m: statistics.median(x["tokens_per_s"] for x in v) for m, v in runs.items()})
