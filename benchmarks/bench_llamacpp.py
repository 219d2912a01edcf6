"""The outside anchor: llama.cpp against our engine, batch-1 decode, on the same random Qwen2.5-0.5B-shaped weights.

    make bench-llamacpp      # fetches and builds llama-cpp-python (6-15 minutes on 2 cores), then runs this
    python -m benchmarks.bench_llamacpp --vocab PATH/ggml-vocab-qwen2.gguf [--prompt-len 32] [--new-tokens 64]
                                        [--repeat 3] [--threads 2]

The LLM of InternVL3-1B (Qwen2.5-0.5B's shape: 24 layers, width 896, GQA 14/2, untied head) with Qwen2's
151,936-token vocabulary, random weights (std 0.02), is run by our engine in bf16 and with `--quantize int8`,
and written to GGUF, tensor for tensor, for llama.cpp: BF16 and F16 as written, Q8_0 quantized by llama.cpp
itself (`llama_model_quantize`). llama.cpp needs a tokenizer in the file to load it; its fields are copied
from llama.cpp's own `models/ggml-vocab-qwen2.gguf` (in the llama-cpp-python source distribution), and both
sides are fed token ids directly. Decode is timed after the same `--prompt-len`-token prompt: ours as a whole
greedy generation minus its first step, llama.cpp as one `eval` of one token per step (its logits copied out
each step, as a user of the binding gets them). The runs interleave (ours, llama.cpp, ...) `--repeat` times
so a drifting machine load hits all alike; medians. Writes benchmarks/results/llamacpp.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402

VOCAB = 151_936  # Qwen2's vocabulary (Qwen2.5-0.5B's embedding rows)
DEFAULT_VOCAB = Path(__file__).resolve().parent.parent / "scratch" / "llamacpp" / "ggml-vocab-qwen2.gguf"


def missing(vocab: Path = DEFAULT_VOCAB) -> str | None:
    """Why this benchmark cannot run here (None when it can)."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return (f"{e.name} is not installed: `make bench-llamacpp` builds llama-cpp-python and installs gguf "
                "(an optional benchmark extra, not needed by make test)")
    if not vocab.is_file():
        return (f"no vocabulary file at {vocab}: pass --vocab PATH/ggml-vocab-qwen2.gguf (in the "
                "llama-cpp-python source distribution, vendor/llama.cpp/models/)")
    return None


def gguf_tensors(llm) -> dict:
    """Our decoder's tensors under llama.cpp's Qwen2 names (PyTorch's row-major shapes; gguf reverses them)."""
    names = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                 "mlp.down_proj.weight": "ffn_down.weight", "self_attn.o_proj.weight": "attn_output.weight"}
    for p in "qkv":
        per_layer[f"self_attn.{p}_proj.weight"] = f"attn_{p}.weight"
        per_layer[f"self_attn.{p}_proj.bias"] = f"attn_{p}.bias"
    out = {}
    for name, tensor in llm.state_dict().items():
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            out[f"blk.{i}.{per_layer[rest]}"] = tensor
        elif name in names:
            out[names[name]] = tensor
    if len(out) != len(llm.state_dict()):
        raise RuntimeError(f"unmapped tensors: {sorted(set(llm.state_dict()) - set(out))}")
    return out


def write_gguf(path: Path, llm, vocab_file: Path, dtype: str) -> Path:
    """The decoder as a GGUF file, matrices in `dtype` (BF16 or F16), vectors in F32 (as llama.cpp's converter)."""
    import gguf
    import numpy as np
    import torch

    cfg = llm.cfg
    vocab = gguf.GGUFReader(vocab_file)

    def field(key: str):
        f = vocab.fields[key]
        return [f.parts[i] for i in f.data]

    w = gguf.GGUFWriter(path, "qwen2")
    w.add_name("internvl-bench random Qwen2.5-0.5B shape")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if dtype == "BF16" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list([bytes(t) for t in field("tokenizer.ggml.tokens")])
    w.add_token_types([int(t[0]) for t in field("tokenizer.ggml.token_type")])
    w.add_token_merges([bytes(t) for t in field("tokenizer.ggml.merges")])
    eos = int(vocab.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    w.add_eos_token_id(eos)
    w.add_bos_token_id(eos)
    w.add_pad_token_id(eos)
    for name, t in gguf_tensors(llm).items():
        if t.ndim == 1:
            w.add_tensor(name, t.float().numpy())
        elif dtype == "F16":
            w.add_tensor(name, t.to(torch.float16).numpy())
        else:  # numpy has no bf16: hand gguf the raw 16-bit words
            w.add_tensor(name, t.contiguous().view(torch.int16).numpy().view(np.uint16),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_q8_0(src: Path, dst: Path, threads: int) -> Path:
    import ctypes

    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to Q8_0")
    return dst


class LlamaCpp:
    """One GGUF file loaded by llama.cpp, timed the way `ours` is: a prompt, then one token per step."""

    def __init__(self, path: Path, threads: int, ctx: int) -> None:
        import llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=ctx, verbose=False)

    def decode_tok_s(self, prompt: list[int], new_tokens: int) -> float:
        self.llm.reset()
        self.llm.eval(prompt)
        token = prompt[-1]
        t0 = time.perf_counter()
        for _ in range(new_tokens - 1):
            self.llm.eval([token])
            token = int(self.llm.scores[self.llm.n_tokens - 1].argmax())  # greedy, as ours
        return (new_tokens - 1) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=Path, default=None,
                    help="llama.cpp's models/ggml-vocab-qwen2.gguf (default: the copy `make bench-llamacpp` unpacks)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    vocab = args.vocab or DEFAULT_VOCAB
    why = missing(vocab)
    if why:
        sys.exit(f"bench_llamacpp: {why}")
    C.setup()
    import llama_cpp
    import torch

    from benchmarks.bench_quantize import build, timed_run
    from internvl.engine.engine import Engine
    from internvl.presets import PRESETS
    from internvl.quantize import quantize_int8
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = PRESETS["InternVL3-1B"].config  # its LLM is Qwen2.5-0.5B's shape but for the vocabulary
    model = build(cfg.replace(llm=dataclasses.replace(cfg.llm, vocab_size=VOCAB)))
    ours = {"bf16": model, "int8": quantize_int8(copy.deepcopy(model))}
    ctx = args.prompt_len + args.new_tokens + 8
    engines = {name: Engine(m, max_batch=1, max_len=ctx) for name, m in ours.items()}
    with tempfile.TemporaryDirectory(prefix="internvl_bench_llamacpp_") as tmp:
        bf16 = write_gguf(Path(tmp) / "bf16.gguf", model.language_model, vocab, "BF16")
        f16 = write_gguf(Path(tmp) / "f16.gguf", model.language_model, vocab, "F16")
        q8 = quantize_q8_0(f16, Path(tmp) / "q8_0.gguf", args.threads)
        theirs = {name: LlamaCpp(path, args.threads, ctx) for name, path in
                  (("BF16", bf16), ("F16", f16), ("Q8_0", q8))}
        C.log(f"built the model, its GGUF files and Q8_0 [{time.perf_counter() - t0:.0f}s]")
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(1000, 150_000, (args.prompt_len,), generator=g).tolist()
        runs: dict[str, list[float]] = {f"ours {n}": [] for n in engines} | {f"llama.cpp {n}": [] for n in theirs}
        load = C.OtherLoad().start()
        for r in range(args.repeat + 1):  # round 0 warms up (kernels, caches) and is not counted
            for name, engine in engines.items():
                tok_s = timed_run(engine, prompt, args.new_tokens)["decode_tok_s"]
                if r:
                    runs[f"ours {name}"].append(tok_s)
            for name, ll in theirs.items():
                tok_s = ll.decode_tok_s(prompt, args.new_tokens)
                if r:
                    runs[f"llama.cpp {name}"].append(tok_s)
        other = load.stop()
    tok_s = {k: statistics.median(v) for k, v in runs.items()}
    pairs = [("ours bf16", "llama.cpp BF16"), ("ours bf16", "llama.cpp F16"), ("ours int8", "llama.cpp Q8_0")]
    out = {"machine": C.machine_info(), "threads": args.threads, "prompt_len": args.prompt_len,
           "new_tokens": args.new_tokens, "repeat": args.repeat, "other_load": other,
           "llama_cpp_version": llama_cpp.__version__, "decode_tok_s": tok_s, "runs": runs,
           "ratios": {f"{a} / {b}": tok_s[a] / tok_s[b] for a, b in pairs}}
    print(C.table(f"batch-1 decode, random Qwen2.5-0.5B-shaped LLM, {args.threads} threads, prompt "
                  f"{args.prompt_len}, {args.new_tokens} tokens (other load {other})",
                  ["engine", "tok/s"], [[k, v] for k, v in tok_s.items()]))
    for k, v in out["ratios"].items():
        print(f"  {k}: {v:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    else:
        C.log(f"wrote {C.write_results('llamacpp', out)}")
    return out


if __name__ == "__main__":
    main()
