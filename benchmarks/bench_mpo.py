"""MPO training throughput next to SFT's, through the real training loop, on the same model and prompts.

    python -m benchmarks.bench_mpo [--steps 10] [--batch 8] [--max-packed-tokens 2048] [--repeat 2]
                                   [--device cpu|cuda] [--bf16] [--wait-quiet SECONDS]

One synthetic preference set (the long-tailed lengths of `bench_sft`: lognormal answers, a third of the prompts
with an image of 1-4 tiles) and its SFT twin (the same prompts with the chosen answers), from the same random
checkpoint (`bench_sft.bench_config`), all packed into rows of --max-packed-tokens. Three modes:
  sft             `internvl train` on the SFT twin: one forward and backward per sample
  mpo             `internvl train --method mpo`: one policy forward and backward over chosen + rejected, plus a
                  no-grad forward of the reference model (a second copy) over the same sequences
  mpo-precomputed `--precompute-ref`: the reference runs once over the data before training (timed apart, as
                  `precompute_seconds`), steps run the policy only
Throughput is real (non-padding) tokens the policy processes per second of step wall time (data, forward(s),
backward, AdamW), after --warmup steps; modes alternate (A B C A B C) so background load hits all alike. An MPO
step handles both responses, so its tokens per pair are about twice SFT's tokens per sample; a pair's image goes
through the ViT once for both (`mpo_data`), which SFT's token count does not see. Results:
benchmarks/results/mpo.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402
from benchmarks.bench_sft import WORDS, make_checkpoint  # noqa: E402

MODES = ("sft", "mpo", "mpo-precomputed")


def make_data(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """n preference lines and their SFT twins (question + chosen); returns (pairs meta, SFT meta)."""
    rng = random.Random(seed)

    def answer() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(min(600, max(3, int(rng.lognormvariate(3.5, 1.0)))))) + "."

    pairs, sft = [], []
    for i in range(n):
        question, chosen, rejected = f"Describe item {i} in detail.", answer(), answer()
        pair = {"question": question, "chosen": chosen, "rejected": rejected}
        conv = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": chosen}]}
        if rng.random() < 1 / 3:
            w = rng.choice((112, 224, 336))
            img = Image.new("RGB", (w, 112), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
            ImageDraw.Draw(img).ellipse((10, 10, 90, 90), fill="white")
            img.save(root / f"img{i}.png")
            pair["image"] = conv["image"] = f"img{i}.png"
        pairs.append(json.dumps(pair))
        sft.append(json.dumps(conv))
    metas = []
    for name, lines in (("pairs", pairs), ("sft", sft)):
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        meta = root / f"{name}_meta.json"
        meta.write_text(json.dumps({name: {"root": str(root), "annotation": str(root / f"{name}.jsonl"),
                                           "repeat_time": 1}}))
        metas.append(meta)
    return metas[0], metas[1]


def run_mode(mode: str, metas: tuple[Path, Path], ckpt: Path, out: Path, args) -> dict:
    from internvl.train.args import TrainConfig
    from internvl.train.metrics import read_metrics
    from internvl.train.trainer import train
    extra = {} if mode == "sft" else {"method": "mpo", "precompute_ref": mode == "mpo-precomputed"}
    cfg = TrainConfig(model=str(ckpt), meta_path=str(metas[0] if extra else metas[1]), output_dir=str(out),
                      max_steps=args.warmup + args.steps, per_device_batch_size=args.batch, packed=True,
                      max_packed_tokens=args.max_packed_tokens, max_seq_length=args.max_packed_tokens, lr=1e-5,
                      save_steps=0, progress=False, seed=0, device=args.device, bf16=args.bf16, **extra)
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    rows = read_metrics(out / "metrics.jsonl")[args.warmup:]
    tokens = sum(r["tokens"] for r in rows)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "samples_per_s": sum(r["samples"] for r in rows) / seconds, "run_wall_seconds": wall}


def precompute_seconds(meta: Path, ckpt: Path, args) -> float:
    """The one-off reference pass of --precompute-ref over the benchmarked pairs, timed on its own."""
    from internvl.processing.tokenizer import Tokenizer
    from internvl.train.data import DataConfig
    from internvl.train.distributed import DistInfo
    from internvl.train.mpo import load_reference, precompute_reference
    from internvl.train.mpo_data import PreferenceCollator, PreferenceDataset
    from internvl.train.trainer import SFTInternVL
    import torch
    tok = Tokenizer.from_pretrained(ckpt)
    info = DistInfo(device=torch.device(args.device))
    ref = load_reference(str(ckpt), None, 0, SFTInternVL, info.device)
    ds = PreferenceDataset(meta, tok, DataConfig.from_model(ref.config, max_seq_length=args.max_packed_tokens))
    start = time.perf_counter()
    precompute_reference(ref, ds, PreferenceCollator(tok.pad_token_id, args.max_packed_tokens), info, args.batch,
                         args.bf16)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=8, help="pairs (MPO) or samples (SFT) per step")
    ap.add_argument("--max-packed-tokens", type=int, default=2048, help="also the longest sample")
    ap.add_argument("--repeat", type=int, default=2, help="runs per mode (alternating)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    args = ap.parse_args(argv)
    C.setup()
    import logging
    logging.getLogger("internvl").setLevel(logging.WARNING)
    r: dict = {"machine": C.machine_info(), "threads": C.THREADS, "device": args.device, "bf16": args.bf16,
               "settings": {k: v for k, v in vars(args).items() if k != "wait_quiet"},
               "contention_start": C.cpu_contention()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        metas = make_data(root / "data", (args.warmup + args.steps) * args.batch)
        ckpt, r["model_parameters"] = make_checkpoint(root)

        def measure() -> dict:
            runs: dict = {m: [] for m in MODES}
            for i in range(args.repeat):
                for mode in MODES:
                    C.log(f"mpo: {mode} run {i + 1}/{args.repeat}")
                    out = Path(tempfile.mkdtemp(prefix=f"{mode}{i}-", dir=root))
                    runs[mode].append(run_mode(mode, metas, ckpt, out, args))
            runs["precompute_seconds"] = precompute_seconds(metas[0], ckpt, args)
            return runs

        runs = C.run_section(measure, wait=args.wait_quiet)
    r["other_load"] = runs.pop("other_load")
    r["precompute_seconds"] = runs.pop("precompute_seconds")
    r["runs"] = runs
    r["tokens_per_s"] = {m: max(x["tokens_per_s"] for x in v) for m, v in runs.items()}
    r["tokens_per_s_median"] = {m: statistics.median(x["tokens_per_s"] for x in v) for m, v in runs.items()}
    r["mpo_vs_sft"] = {m: r["tokens_per_s"][m] / r["tokens_per_s"]["sft"] for m in MODES[1:]}
    return C.finish("mpo", r, report)


def report(r: dict) -> str:
    rows = [[m, r["tokens_per_s"][m], r["tokens_per_s_median"][m], r["tokens_per_s"][m] / r["tokens_per_s"]["sft"]]
            for m in MODES]
    out = C.table(f"MPO vs SFT training throughput on {r['device']} (best of {len(r['runs']['sft'])} runs; other "
                  f"processes used {r['other_load'] or 0:.0%} of the CPUs meanwhile)",
                  ["mode", "real tokens/s (best)", "median", "vs SFT"], rows)
    return out + f"\n--precompute-ref's one-off reference pass over the {r['settings']['batch'] * (r['settings']['warmup'] + r['settings']['steps'])} pairs: {r['precompute_seconds']:.1f} s"


if __name__ == "__main__":
    main()
