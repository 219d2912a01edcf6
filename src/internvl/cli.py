"""The `internvl` command: a table of subcommands, each a small function over parsed arguments.

Only this module prints. Every expected failure (bad path, corrupt image, wrong layout, a flag out of range)
ends with one `error: ...` line and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .argtypes import Parser, device, non_negative_float, non_negative_int, positive_int, probability
from .errors import ConfigError, InternVLError
from .tiny import DEFAULT_MODEL, DEFAULT_PRM


def cmd_convert(args: argparse.Namespace) -> None:
    from .checkpoint.loader import convert
    out = convert(args.src, args.dst, args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} checkpoint to {out}")


def cmd_info(args: argparse.Namespace) -> None:
    if args.hardware:
        _print_hardware(args)
    if args.model is None:
        if not args.hardware:
            raise ConfigError("info needs a MODEL (checkpoint directory, Hub repo id or preset name) or --hardware")
        return
    _print_model(args)


def _print_hardware(args: argparse.Namespace) -> None:
    """The machine, the precision plan `chat`/`serve` would pick with these flags and why, the fast paths."""
    from .hardware import fast_paths, report
    from .precision import choose_plan, dtype_name
    device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    plan = choose_plan(device, args.dtype, args.precision)
    for line in report():
        print(line)
    print(f"precision   {plan.describe()} on {device} (--dtype {args.dtype} --precision {args.precision})")
    for phase, dtype in (("vision", plan.vision), ("prefill", plan.prefill), ("decode", plan.decode)):
        print(f"  {phase:<9} {dtype_name(dtype)}: {plan.why[phase]}")
    print("fast paths")
    for name, state in fast_paths().items():
        print(f"  {name:<11} {state}")


def _print_model(args: argparse.Namespace) -> None:
    from .checkpoint.loader import build_model, read_config, resolve_path, resolve_tie
    from .presets import PRESETS
    if args.model in PRESETS:
        cfg, source = PRESETS[args.model].config, f"preset {args.model}"
    else:
        directory = resolve_path(args.model)
        cfg, layout = read_config(directory)
        cfg = resolve_tie(cfg, directory, layout)  # a -hf head counts once when the files tie it
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
          + (f", {llm.num_experts} experts top-{llm.num_experts_per_tok}" if llm.num_experts else "")
          + (f", sliding window {llm.sliding_window} on {llm.all_layer_types.count('sliding_attention')} of "
             f"{llm.num_hidden_layers} layers" if "sliding_attention" in llm.all_layer_types else ""))
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
    from .precision import choose_plan
    device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    plan = choose_plan(device, args.dtype, args.precision)
    model, tokenizer = from_pretrained(args.model, dtype=plan.weights, device=device)
    model.precision = plan
    if args.no_thinking:
        from .processing.templates import get_template, without_thinking
        without_thinking(get_template(model.config.template))  # a template without a thinking mode: say so
        model.enable_thinking = False
    if args.quantize == "int8":
        from .quantize import quantize_int8
        quantize_int8(model)
    from .models.flash import resolve_vir
    resolve_vir(model.config, args.vir)  # "always" on a model without the Flash modules: one line, exit 2
    model.vir = args.vir
    if args.best_of != 1:
        session = _best_of_n_session(args, model, tokenizer, device)
    else:
        temperature = args.temperature or 0.0
        gen = {"max_new_tokens": args.max_new_tokens, "do_sample": temperature > 0, "temperature": temperature,
               "top_p": 1.0 if args.top_p is None else args.top_p}
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


def _best_of_n_session(args: argparse.Namespace, model, tokenizer, device: str):
    """`chat --best-of N`: N candidates per question (greedy + sampled), the verifier's choice printed."""
    from .tts.best_of_n import SAMPLE_TEMPERATURE, SAMPLE_TOP_P, BestOfNSession, Verifier
    from .runtime import resolve_dtype
    verifier = None
    if args.strategy != "majority" and args.best_of > 1:
        verifier = Verifier.load(args.prm, dtype=resolve_dtype(args.dtype, device), device=device)
    return BestOfNSession(model, tokenizer, {"max_new_tokens": args.max_new_tokens}, args.best_of, args.strategy,
                          verifier, args.max_tiles,
                          SAMPLE_TEMPERATURE if args.temperature is None else args.temperature,
                          SAMPLE_TOP_P if args.top_p is None else args.top_p, args.seed)


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
    if args.eval_command in EVAL_COMMANDS:  # else it names a task (`internvl eval shapes`)
        EVAL_COMMANDS[args.eval_command][0](args)
        return
    from .eval.report import format_table
    from .eval.runner import evaluate, from_args
    summary = evaluate(from_args(args))
    if "curve" in summary:  # --best-of / --step-by-step
        from .tts.report import format_curve
        print(f"{summary['task']}: {summary['n']} held-out samples, best of {summary['best_of']}, model "
              f"{summary['model']}, PRM {summary['prm']}, {summary['seconds']:.1f}s")
        print(format_curve(summary))
        print(f"wrote candidates.jsonl, summary.json and best_of_n.png to {summary['out']}")
        return
    print(f"{summary['task']}: {summary['n']} held-out samples, model {summary['model']} ({summary['dtype']} on "
          f"{summary['device']}), {summary['seconds']:.1f}s, {summary['visual_tokens_per_question']:.1f} visual "
          f"tokens per question" + (f" ({summary['compressed_tiles']} of {summary['tiles']} tiles compressed)"
                                    if summary["compressed_tiles"] else ""))
    print(format_table(summary))
    print(f"wrote predictions.jsonl, summary.json and accuracy.png to {summary['out']}")


def cmd_eval_run(args: argparse.Namespace) -> None:
    from .eval.harness import RunConfig, run
    from .eval.results import format_summary
    from .train.args import from_namespace
    cfg = from_namespace(args, RunConfig)
    try:
        summary = run(cfg)
    except KeyboardInterrupt:  # every finished answer is already on disk
        print("\ninterrupted: the answers so far are saved; the same command resumes", file=sys.stderr)
        raise SystemExit(130) from None
    print(format_summary(summary))
    for name, ds in {**summary["datasets"], **summary["unscored"]}.items():
        print(f"{name}: {ds['generated']} rows generated, {ds['resumed']} resumed from an earlier run, "
              f"{ds['failed']} failed, {ds['seconds']:.1f}s" + (f"; first failure: {ds['failures'][0]}"
                                                                 if ds["failures"] else ""))
    for name in summary["unscored"]:
        print(f"{name}: no answer column, predictions only")
    print(f"wrote predictions, summary.json, categories.csv and scores.png to {summary['out']}")


def cmd_eval_score(args: argparse.Namespace) -> None:
    from .eval.harness import ScoreConfig, score_files
    from .eval.results import format_summary
    from .train.args import from_namespace
    summary = score_files(from_namespace(args, ScoreConfig))
    print(format_summary(summary))
    if "out" in summary:
        print(f"wrote summary.json, categories.csv and scores.png to {summary['out']}")


def cmd_eval_compare(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .eval.results import bar_chart, compare, load_summary
    runs = []
    for d in args.dirs:
        summary = load_summary(d)
        runs.append((summary.get("label") or Path(d).name, summary))
    labels, series, table = compare(runs)
    print(table)
    bar_chart(labels, series, "scores in percent", args.out)
    print(f"wrote {args.out}")


def cmd_eval_export_shapes(args: argparse.Namespace) -> None:
    from .errors import ConfigError
    from .eval.export import export_shapes
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    paths = export_shapes(args.out, args.n, args.seed)
    for path in paths:
        print(f"wrote {path}")
    print("evaluate the shipped tiny model on them with: internvl eval run " + " ".join(f"--data {p}" for p in paths))


EVAL_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None], str]] = {
    "run": (cmd_eval_run, "generate answers to VLMEvalKit benchmark files (TSV) with a model, then score them"),
    "score": (cmd_eval_score, "score existing predictions (ours or VLMEvalKit's) against benchmark files, no model"),
    "compare": (cmd_eval_compare, "several runs side by side: a table and one chart"),
    "export-shapes": (cmd_eval_export_shapes, "write the tiny model's world as VLMEvalKit TSVs (MCQ, Y/N, VQA)"),
}


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    from .eval.harness import RunConfig, ScoreConfig
    from .eval.runner import add_arguments as add_task_arguments
    from .eval.tasks import TASKS
    from .train.args import add_arguments
    sub = parser.add_subparsers(dest="eval_command", required=True,
                                metavar="{" + ",".join([*EVAL_COMMANDS, *sorted(TASKS)]) + "}")
    for name, (_, help_text) in EVAL_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "run":
            add_arguments(p, RunConfig)
        elif name == "score":
            add_arguments(p, ScoreConfig)
        elif name == "compare":
            p.add_argument("dirs", nargs="+", metavar="DIR", help="output directories of eval run / eval score")
            p.add_argument("--out", default="compare.png", help="the chart (default: compare.png)")
        else:
            p.add_argument("--out", required=True, help="directory for the three TSV files")
            p.add_argument("--n", type=int, default=200, help="questions per file (default: 200)")
            p.add_argument("--seed", type=int, default=0, help="first held-out seed")
    for task in sorted(TASKS):
        help_text = f"the {task} task: accuracy per question type and a blind baseline"
        p = sub.add_parser(task, help=help_text, description=help_text)
        add_task_arguments(p, task=False)
        p.set_defaults(task=task)


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None], str]] = {
    "chat": (cmd_chat, "answer a question about images with a model"),
    "convert": (cmd_convert, "convert a checkpoint between the official and -hf layouts"),
    "info": (cmd_info, "print a model's configuration, parameter count and memory, or (--hardware) the machine "
                       "and the precision chosen for each phase"),
    "eval": (cmd_eval, "evaluate a model: benchmark files (run, score, compare, export-shapes) or a built-in task"),
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


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """--dtype, --precision and --device, from ServeConfig's fields (one wording for chat, serve and info)."""
    from .precision import PRECISIONS
    from .runtime import DTYPES
    from .serve.config import ServeConfig, _comments
    helps = _comments()
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default=ServeConfig.dtype, help=helps.get("dtype"))
    parser.add_argument("--precision", choices=PRECISIONS, default=ServeConfig.precision,
                        help=helps.get("precision"))
    parser.add_argument("--device", type=device, default=None, help=helps.get("device"))


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
            _add_eval_arguments(p)
        elif name == "info":
            p.add_argument("model", nargs="?", help="checkpoint directory, Hub repo id, or preset name")
            p.add_argument("--hardware", action="store_true",
                           help="the detected CPU/GPU, the precision chosen for each phase and why, the fast paths")
            add_precision_arguments(p)
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
            p.add_argument("--temperature", type=non_negative_float, default=None,
                           help="0 = greedy (the default); with --best-of, of the sampled candidates (default 0.6)")
            p.add_argument("--top-p", type=probability, default=None,
                           help="nucleus sampling mass, in (0, 1]; default 1.0, with --best-of 0.95")
            p.add_argument("--best-of", type=positive_int, default=1, metavar="N",
                           help="answer N times (1 greedy + N-1 sampled, in one batch) and print the best")
            p.add_argument("--strategy", choices=["prm", "orm", "majority"], default="prm",
                           help="how --best-of picks: PRM step scores, ORM (whole answer), or majority vote")
            p.add_argument("--prm", default=DEFAULT_PRM, help="process reward model for --best-of "
                                                              "(default: the shipped tiny PRM)")
            p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampled --best-of candidates")
            add_precision_arguments(p)
            p.add_argument("--special-tokens-in-text", action="store_true",
                           help="read control tokens spelled in the question (<|im_start|>, ...) as control tokens, "
                                "not as text (the official chat()'s behaviour)")
            p.add_argument("--quantize", choices=["none", "int8"], default="none",
                           help="weight-only int8 for the LLM's linear layers")
            p.add_argument("--no-thinking", action="store_true",
                           help="answer without the thinking system prompt (Intern-S1 thinks by default)")
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
