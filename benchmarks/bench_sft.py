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
The model is the tiny preset's vision tower with a wider 4-layer LLM (see `training.bench_config`). Target: packed
>= 1.5x unpacked. Results: benchmarks/results/sft.json.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402
from benchmarks import training as T  # noqa: E402

TARGET = 1.5


def make_data(root: Path, n: int, seed: int = 0) -> Path:
    """n records with long-tailed lengths (`training.answer`), a third with an image."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        record = {"conversations": [{"from": "human", "value": f"Describe item {i} in detail."},
                                    {"from": "gpt", "value": T.answer(rng)}]}
        image = T.maybe_image(rng, root, i)
        if image:
            record["image"] = image
        records.append(record)
    return T.write_dataset(root, "bench", records, "meta.json")


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
    result, rows = T.train_and_measure(args, ckpt, meta, out, packed=packed, lr=1e-4)
    return {**result, "losses": [r["loss"] for r in rows]}


def main(argv: list[str] | None = None) -> dict:
    args = T.parser(__doc__.split("\n")[0], "samples per step").parse_args(argv)
    r = T.begin(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        meta = make_data(root / "data", (args.warmup + args.steps) * args.batch)
        ckpt, r["model_parameters"] = T.make_checkpoint(root)
        r["padding"] = padding_share(meta, ckpt, args.batch, args.warmup + args.steps, args.max_packed_tokens)

        def measure() -> dict:
            return T.alternating_runs("sft", ("unpacked", "packed"), args.repeat, root,
                                      lambda mode, out: run_mode(meta, ckpt, out, mode == "packed", args))

        runs = C.run_section(measure, wait=args.wait_quiet)
    r["other_load"] = runs.pop("other_load")
    best, median = T.best_and_median(runs)
    r["runs"] = {m: [{k: x[k] for k in ("tokens", "seconds", "tokens_per_s")} for x in v] for m, v in runs.items()}
    r["tokens_per_s"] = best
    r["speedup"] = best["packed"] / best["unpacked"]
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
