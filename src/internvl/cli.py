"""The `internvl` command: a table of subcommands, each a small function over parsed arguments.

Only this module prints. Every expected failure (bad path, corrupt image, wrong layout, a flag out of range)
ends with one `error: ...` line and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .argtypes import Parser, device, non_negative_float, positive_int, probability
from .errors import InternVLError
from .tiny import DEFAULT_MODEL


def cmd_convert(args: argparse.Namespace) -> None:
    from .checkpoint.loader import convert
    out = convert(args.src, args.dst, args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} checkpoint to {out}")


def cmd_info(args: argparse.Namespace) -> None:
    from .checkpoint.loader import build_model, read_config, resolve_path
    from .presets import PRESETS
    if args.model in PRESETS:
        cfg, source = PRESETS[args.model].config, f"preset {args.model}"
    else:
        cfg, layout = read_config(resolve_path(args.model))
        source = f"{args.model} ({layout} layout)"
    model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("vision_model", "mlp1", "language_model")}
    v, llm = cfg.vision, cfg.llm
    print(f"model       {source}")
    print(f"vision      InternViT {v.hidden_size}d x {v.num_hidden_layers} layers, {v.num_attention_heads} heads, "
          f"{v.norm_type}, tile {cfg.image_size}px / patch {v.patch_size}")
    print(f"llm         {llm.architecture} {llm.hidden_size}d x {llm.num_hidden_layers} layers, "
          f"{llm.num_attention_heads}/{llm.num_key_value_heads} heads, vocab {llm.vocab_size}"
          + (f", {llm.num_experts} experts top-{llm.num_experts_per_tok}" if llm.num_experts else ""))
    print(f"image       {cfg.num_image_token} tokens per tile, tiles {cfg.min_dynamic_patch}-{cfg.max_dynamic_patch}"
          f", thumbnail {cfg.use_thumbnail}, pixel shuffle {cfg.ps_version}, template {cfg.template}")
    if cfg.has_vir:
        rel, abs_ = cfg.flash_relative_threshold, cfg.flash_absolute_threshold
        thresholds = "from the checkpoint" if rel is None else f"relative {rel:g}, absolute {abs_:g}"
        print(f"flash       ViR router {'on' if cfg.flash_mode else 'off'} by default ({thresholds}); "
              f"{cfg.num_image_token_compressed} tokens per compressed tile")
        flash = sum(p.numel() for name in ("mlp2", "pooling_before_gating", "gating")
                    for p in getattr(model, name).parameters())
        router = f", mlp2 + router {flash:,}"
    else:
        router = ""
    print(f"parameters  {n:,} (vision {parts['vision_model']:,}, projector {parts['mlp1']:,}, "
          f"llm {parts['language_model']:,}{router})")
    print(f"memory      {n * 2 / 2**30:.2f} GiB in bf16, {n * 4 / 2**30:.2f} GiB in fp32 (weights only)")


def cmd_chat(args: argparse.Namespace) -> None:
    from .chat import ChatSession, from_pretrained
    from .runtime import resolve_dtype
    device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    model, tokenizer = from_pretrained(args.model, dtype=resolve_dtype(args.dtype, device), device=device)
    if args.quantize == "int8":
        from .quantize import quantize_int8
        quantize_int8(model)
    from .models.flash import resolve_vir
    resolve_vir(model.config, args.vir)  # "always" on a model without the Flash modules: one line, exit 2
    model.vir = args.vir
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": args.temperature > 0,
           "temperature": args.temperature, "top_p": args.top_p}
    session = ChatSession(model, tokenizer, gen, max_tiles=args.max_tiles,
                          special_tokens_in_text=args.special_tokens_in_text)
    for path in args.image:
        session.add_image(path)
    if args.video:
        session.add_video(args.video, args.num_frames)
    if args.prompt:
        _print_stream(session.ask(args.prompt))
        return
    print("interactive chat: /image FILE adds an image, /reset starts over, /exit (or Ctrl-D) quits", file=sys.stderr)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            session.reset()
            print("(conversation reset)", file=sys.stderr)
        elif line.startswith("/image "):
            try:
                session.add_image(line[len("/image "):].strip())
                print(f"(image added: {session.pending_images} waiting for the next question)", file=sys.stderr)
            except InternVLError as e:  # a bad file in the REPL is reported, the session goes on
                print(f"error: {e}", file=sys.stderr)
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]}; commands: /image FILE, /reset, /exit", file=sys.stderr)
        else:
            _print_stream(session.ask(line))


def _print_stream(chunks) -> None:
    for chunk in chunks:
        print(chunk, end="", flush=True)
    print()


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo
    run_demo(print)


def cmd_train(args: argparse.Namespace) -> None:
    from .train.args import TrainConfig, from_namespace
    from .train.trainer import train
    result = train(from_namespace(args, TrainConfig))
    if result.get("checkpoint") is not None:
        losses = result["losses"]
        last = f", last loss {losses[-1]:.4f}" if losses else ""
        print(f"trained steps {result['start_step']}..{result['end_step']} of {result['max_steps']}{last}; "
              f"checkpoint {result['checkpoint']}")


def cmd_merge_lora(args: argparse.Namespace) -> None:
    from .checkpoint.loader import check_destination
    from .train.lora import merge_adapter
    check_destination(args.output, args.overwrite)
    out = merge_adapter(args.adapter, args.output, model=args.model, tokenizer=args.tokenizer)
    print(f"wrote merged checkpoint to {out}")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve.config import from_args
    from .serve.server import banner, build_app, check_port, run
    config = from_args(args)
    check_port(config.host, config.port)  # before minutes of loading, not after
    app, name = build_app(config)
    print(banner(config, name), flush=True)
    run(app, config)


def cmd_eval(args: argparse.Namespace) -> None:
    from .eval.report import format_table
    from .eval.runner import evaluate, from_args
    summary = evaluate(from_args(args))
    print(f"{summary['task']}: {summary['n']} held-out samples, model {summary['model']} ({summary['dtype']} on "
          f"{summary['device']}), {summary['seconds']:.1f}s")
    print(format_table(summary))
    print(f"wrote predictions.jsonl, summary.json and accuracy.png to {summary['out']}")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None], str]] = {
    "chat": (cmd_chat, "answer a question about images with a model"),
    "convert": (cmd_convert, "convert a checkpoint between the official and -hf layouts"),
    "info": (cmd_info, "print a model's configuration, parameter count and memory"),
    "eval": (cmd_eval, "evaluate a model on a task: accuracy per question type and a blind baseline"),
    "demo": (cmd_demo, "the shipped tiny model answers questions about its example images"),
    "serve": (cmd_serve, "serve a model over an OpenAI-compatible HTTP API, with a web chat page"),
    "train": (cmd_train, "supervised fine-tuning on official-format data (torchrun for several processes)"),
    "merge-lora": (cmd_merge_lora, "merge a LoRA adapter from training into plain weights"),
}


def add_vir_argument(parser: argparse.ArgumentParser) -> None:
    from .models.flash import VIR_MODES
    parser.add_argument("--vir", choices=VIR_MODES, default="auto",
                        help="InternVL3.5-Flash visual resolution router: auto (route tiles as the checkpoint's "
                             "config says), off (every tile keeps all its tokens), always (compress every tile)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="internvl", description="Run, convert and inspect InternVL models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "convert":
            p.add_argument("src", help="checkpoint directory or Hub repo id")
            p.add_argument("dst", help="output directory")
            p.add_argument("--to", choices=["official", "hf"], required=True, help="layout to write")
            p.add_argument("--overwrite", action="store_true",
                           help="write into an existing non-empty directory (replacing only the checkpoint's own "
                                "files) or over an existing file")
        elif name == "eval":
            from .eval.runner import add_arguments as add_eval_arguments
            add_eval_arguments(p)
        elif name == "info":
            p.add_argument("model", help="checkpoint directory, Hub repo id, or preset name")
        elif name == "serve":
            from .serve.config import add_arguments
            add_arguments(p)
        elif name == "chat":
            p.add_argument("prompt", nargs="?", help="the question; without it, an interactive chat on stdin")
            p.add_argument("--model", default=DEFAULT_MODEL,
                           help="checkpoint directory or Hub repo id (default: the shipped tiny model)")
            p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
            p.add_argument("--video", help="video file (frames become Frame-1: <image> ...)")
            p.add_argument("--num-frames", type=positive_int, default=8, help="frames sampled from --video")
            p.add_argument("--max-tiles", type=positive_int, default=None, help="most tiles per image (default: config)")
            p.add_argument("--max-new-tokens", type=positive_int, default=256)
            p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
            p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling mass, in (0, 1]")
            from .runtime import DTYPES
            p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                           help="auto (bf16 where the CPU has it, else fp32), bf16, fp32")
            p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
            p.add_argument("--special-tokens-in-text", action="store_true",
                           help="read control tokens spelled in the question (<|im_start|>, ...) as control tokens, "
                                "not as text (the official chat()'s behaviour)")
            p.add_argument("--quantize", choices=["none", "int8"], default="none",
                           help="weight-only int8 for the LLM's linear layers")
            add_vir_argument(p)
        elif name in ("train", "merge-lora"):
            from .train.args import MergeConfig, TrainConfig, add_arguments
            add_arguments(p, TrainConfig if name == "train" else MergeConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        COMMANDS[args.command][0](args)
    except InternVLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
