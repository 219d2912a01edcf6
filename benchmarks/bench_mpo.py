"""MPO training throughput next to SFT's, through the real training loop, on the same model and prompts.

    python -m benchmarks.bench_mpo [--steps 10] [--batch 8] [--max-packed-tokens 2048] [--repeat 2]
                                   [--device cpu|cuda] [--bf16] [--wait-quiet SECONDS]

One synthetic preference set (the long-tailed lengths of `bench_sft`: lognormal answers, a third of the prompts
with an image of 1-4 tiles) and its SFT twin (the same prompts with the chosen answers), from the same random
checkpoint (`training.bench_config`), all packed into rows of --max-packed-tokens. Three modes:
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

import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402
from benchmarks import training as T  # noqa: E402

MODES = ("sft", "mpo", "mpo-precomputed")


def make_data(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """n preference lines and their SFT twins (question + chosen); returns (pairs meta, SFT meta)."""
    rng = random.Random(seed)
    pairs, sft = [], []
    for i in range(n):
        question, chosen, rejected = f"Describe item {i} in detail.", T.answer(rng), T.answer(rng)
        pair = {"question": question, "chosen": chosen, "rejected": rejected}
        conv = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": chosen}]}
        image = T.maybe_image(rng, root, i)
        if image:
            pair["image"] = conv["image"] = image
        pairs.append(pair)
        sft.append(conv)
    return (T.write_dataset(root, "pairs", pairs, "pairs_meta.json"),
            T.write_dataset(root, "sft", sft, "sft_meta.json"))


def run_mode(mode: str, metas: tuple[Path, Path], ckpt: Path, out: Path, args) -> dict:
    extra = {} if mode == "sft" else {"method": "mpo", "precompute_ref": mode == "mpo-precomputed"}
    return T.train_and_measure(args, ckpt, metas[0] if extra else metas[1], out, lr=1e-5, **extra)[0]


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
    args = T.parser(__doc__.split("\n")[0], "pairs (MPO) or samples (SFT) per step").parse_args(argv)
    r = T.begin(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        metas = make_data(root / "data", (args.warmup + args.steps) * args.batch)
        ckpt, r["model_parameters"] = T.make_checkpoint(root)

        def measure() -> dict:
            runs = T.alternating_runs("mpo", MODES, args.repeat, root,
                                      lambda mode, out: run_mode(mode, metas, ckpt, out, args))
            runs["precompute_seconds"] = precompute_seconds(metas[0], ckpt, args)
            return runs

        runs = C.run_section(measure, wait=args.wait_quiet)
    r["other_load"] = runs.pop("other_load")
    r["precompute_seconds"] = runs.pop("precompute_seconds")
    r["runs"] = runs
    r["tokens_per_s"], r["tokens_per_s_median"] = T.best_and_median(runs)
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
