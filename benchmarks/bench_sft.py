"""SFT throughput: packed vs unpacked batches through the real training loop, on the same data and model.

    python -m benchmarks.bench_sft [--steps 10] [--batch 8] [--max-packed-tokens 2048] [--repeat 2]
                                   [--device cpu|cuda] [--bf16] [--wait-quiet SECONDS]

Both modes run `internvl.train.trainer.train` on one synthetic SFT set whose sample lengths are long-tailed
like real SFT mixtures (many short answers, a few long ones; a third of the samples carry an image of 1-4
tiles), from the same random checkpoint, with the same seed, so every step sees exactly the same samples:
  unpacked  one sample per row, padded to the longest sample of the micro-batch
  packed    the micro-batch's samples packed first-fit into rows of --max-packed-tokens (block-diagonal
            attention, positions restarting per sample)
Throughput is real (non-padding) tokens per second of wall time per optimizer step, data loading, forward,
backward and AdamW included, after --warmup steps; the two modes' runs alternate (A B A B) so background load
hits both alike. As a check that both did the same work, their per-step losses must agree (the packed loss
equals the unpacked one by construction). Also reported: the share of computed positions that were padding.
The model is the tiny preset's vision tower with a wider 4-layer LLM (see `bench_config`). Target: packed
>= 1.5x unpacked. Results: benchmarks/results/sft.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402

TARGET = 1.5
WORDS = ("the red circle sits left of a blue square while green lines cross the yellow field near "
         "seven small dots and one large triangle").split()


def bench_config():
    """tiny-random's vision tower (112px tiles, 16 tokens each) with a 4-layer, 256-wide LLM (~3M parameters)."""
    from internvl.presets import PRESETS
    base = PRESETS["tiny-random"].config
    llm = dataclasses.replace(base.llm, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2)
    return base.replace(llm=llm, max_dynamic_patch=4)


def make_data(root: Path, n: int, seed: int = 0) -> Path:
    """n records with long-tailed lengths: lognormal answer lengths (median ~33 words, capped at 600), so the
    samples' median is ~400 tokens (byte-level tokenizer) and the longest reach --max-packed-tokens."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = min(600, max(3, int(rng.lognormvariate(3.5, 1.0))))
        answer = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
        record = {"conversations": [{"from": "human", "value": f"Describe item {i} in detail."},
                                    {"from": "gpt", "value": answer}]}
        if rng.random() < 1 / 3:
            w = rng.choice((112, 224, 336))
            img = Image.new("RGB", (w, 112), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
            ImageDraw.Draw(img).ellipse((10, 10, 90, 90), fill="white")
            img.save(root / f"img{i}.png")
            record["image"] = f"img{i}.png"
        lines.append(json.dumps(record))
    (root / "bench.jsonl").write_text("\n".join(lines) + "\n")
    meta = root / "meta.json"
    meta.write_text(json.dumps({"bench": {"root": str(root), "annotation": str(root / "bench.jsonl"),
                                          "repeat_time": 1}}))
    return meta


def make_checkpoint(root: Path) -> tuple[Path, int]:
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


def padding_share(meta: Path, ckpt: Path, batch: int, batches: int, max_packed: int) -> dict:
    """Share of computed (B x T) positions that are padding, per mode, over the benchmarked batches."""
    from internvl.processing.tokenizer import Tokenizer
    from internvl.train.data import DataConfig, SFTDataset
    from internvl.train.packing import PackedCollator
    from internvl.checkpoint.loader import read_config
    tok = Tokenizer.from_pretrained(ckpt)
    ds = SFTDataset(meta, tok, DataConfig.from_model(read_config(ckpt)[0], max_seq_length=max_packed))
    out = {}
    for mode, budget in (("unpacked", None), ("packed", max_packed)):
        collate = PackedCollator(tok.pad_token_id, "square", budget)
        real = computed = 0
        for b in range(batches):
            x = collate([ds[i] for i in range(b * batch, (b + 1) * batch)])
            real += x.num_tokens
            computed += x.input_ids.numel()
        out[mode] = {"real_tokens": real, "computed_positions": computed, "padding_share": 1 - real / computed}
    return out


def run_mode(meta: Path, ckpt: Path, out: Path, packed: bool, args) -> dict:
    from internvl.train.args import TrainConfig
    from internvl.train.metrics import read_metrics
    from internvl.train.trainer import train
    cfg = TrainConfig(model=str(ckpt), meta_path=str(meta), output_dir=str(out), max_steps=args.warmup + args.steps,
                      per_device_batch_size=args.batch, packed=packed, max_packed_tokens=args.max_packed_tokens,
                      max_seq_length=args.max_packed_tokens, lr=1e-4, save_steps=0, progress=False, seed=0,
                      device=args.device, bf16=args.bf16)
    train(cfg)
    rows = read_metrics(out / "metrics.jsonl")[args.warmup:]
    tokens = sum(r["tokens"] for r in rows)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "losses": [r["loss"] for r in read_metrics(out / "metrics.jsonl")]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=8, help="samples per step")
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
    if args.device == "cuda":
        r["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        meta = make_data(root / "data", (args.warmup + args.steps) * args.batch)
        ckpt, r["model_parameters"] = make_checkpoint(root)
        r["padding"] = padding_share(meta, ckpt, args.batch, args.warmup + args.steps, args.max_packed_tokens)

        def measure() -> dict:
            runs: dict = {"unpacked": [], "packed": []}
            for i in range(args.repeat):
                for mode in ("unpacked", "packed"):
                    C.log(f"sft: {mode} run {i + 1}/{args.repeat}")
                    out = Path(tempfile.mkdtemp(prefix=f"{mode}{i}-", dir=root))  # fresh: sections may re-run
                    runs[mode].append(run_mode(meta, ckpt, out, mode == "packed", args))
            return runs

        runs = C.run_section(measure, wait=args.wait_quiet)
    r["other_load"] = runs.pop("other_load")
    best = {m: max(x["tokens_per_s"] for x in v) for m, v in runs.items()}
    r["runs"] = {m: [{k: x[k] for k in ("tokens", "seconds", "tokens_per_s")} for x in v] for m, v in runs.items()}
    r["tokens_per_s"] = best
    r["speedup"] = best["packed"] / best["unpacked"]
    median = {m: statistics.median(x["tokens_per_s"] for x in v) for m, v in runs.items()}
    r["speedup_of_medians"] = median["packed"] / median["unpacked"]
    a, b = runs["unpacked"][0]["losses"], runs["packed"][0]["losses"]
    r["max_loss_diff_packed_vs_unpacked"] = max(abs(x - y) for x, y in zip(a, b))
    r["target"] = TARGET
    r["target_met"] = r["speedup"] >= TARGET
    return C.finish("sft", r, report)


def report(r: dict) -> str:
    rows = [[mode, r["tokens_per_s"][mode], r["padding"][mode]["padding_share"],
             r["padding"][mode]["computed_positions"]] for mode in ("unpacked", "packed")]
    out = C.table(f"SFT training throughput on {r['device']} (best of {len(r['runs']['packed'])} runs; other processes "
                  f"used {r['other_load'] or 0:.0%} of the CPUs meanwhile)",
                  ["batches", "real tokens/s", "padding share", "positions computed"], rows)
    return out + (f"\npacked / unpacked: {r['speedup']:.2f}x best vs best, {r['speedup_of_medians']:.2f}x median vs "
                  f"median (target >= {TARGET}x: {'met' if r['target_met'] else 'NOT met'}); same losses: max |diff| "
                  f"{r['max_loss_diff_packed_vs_unpacked']:.2g}")


if __name__ == "__main__":
    main()
