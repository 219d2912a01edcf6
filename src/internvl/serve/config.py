"""The server's settings: one dataclass, and the `internvl serve` flags generated from it.

No FastAPI here, so `internvl --help` works without the `serve` extra installed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from ..errors import ConfigError
from ..tiny import DEFAULT_MODEL  # the shipped tiny model, loaded without --model


@dataclass
class ServeConfig:
    model: str = DEFAULT_MODEL  # checkpoint directory or Hub repo id (default: the shipped tiny model)
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0 exposes the server to the network)
    port: int = 8000  # TCP port
    api_key: str | None = None  # require 'Authorization: Bearer KEY' on /v1/*
    served_model_name: str | None = None  # the id clients pass as `model` (default: the model path's last part)
    dtype: str = "auto"  # auto (bf16 where the CPU has it, else fp32), bf16, fp32
    device: str | None = None  # cpu or cuda (default: cuda when available)
    quantize: str = "none"  # none or int8 (weight-only, the LLM's linear layers)
    max_batch: int = 8  # requests decoded together (KV-cache slots)
    max_queue: int = 64  # requests waiting beyond the running ones; more are refused with 429
    max_len: int | None = None  # tokens per request, prompt + answer (default: the model's, capped by the engine)
    prefill_budget: int = 4096  # prompt tokens prefilled in one engine step, so new prompts stall streams briefly
    vision_budget: int = 4  # image tiles encoded per engine step, for the same reason
    max_tiles: int | None = None  # most tiles per image, and the default (default: the model's max_dynamic_patch)
    default_max_tokens: int = 1024  # answer length when a request gives no max_tokens (cut to the context)
    allowed_local_media_path: str | None = None  # a directory whose files requests may name as image paths
    max_image_bytes: int = 20 * 2**20  # largest encoded image accepted (data URI, download or file)
    max_image_pixels: int = 50_000_000  # largest decoded image (decompression-bomb guard)
    max_request_bytes: int = 64 * 2**20  # largest request body
    media_timeout: float = 10.0  # seconds to download one http(s) image

    def __post_init__(self) -> None:
        for name in ("max_batch", "prefill_budget", "vision_budget", "default_max_tokens", "max_image_bytes",
                     "max_image_pixels", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ConfigError(f"max_tiles must be >= 1, got {self.max_tiles}")
        if self.quantize not in ("none", "int8"):
            raise ConfigError(f"quantize must be none or int8, got {self.quantize!r}")


def _comments() -> dict[str, str]:
    """Field name -> the comment after it in the source above: the flag's help text."""
    import inspect
    out: dict[str, str] = {}
    try:
        source = inspect.getsource(ServeConfig)
    except (OSError, TypeError):  # installed without sources: flags without help text
        return out
    for line in source.splitlines():
        head, _, comment = line.partition("  # ")
        if ":" in head and comment:
            out[head.strip().split(":")[0]] = comment.strip()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per ServeConfig field, typed and documented from the dataclass."""
    helps = _comments()
    types = {"int": int, "float": float}
    for f in fields(ServeConfig):
        kind = str(f.type).split(" |")[0]
        flag = "--" + f.name.replace("_", "-")
        if f.name == "model":
            parser.add_argument(flag, default=DEFAULT_MODEL, help=helps.get(f.name))
        elif f.name == "quantize":
            parser.add_argument(flag, choices=["none", "int8"], default=f.default, help=helps.get(f.name))
        else:
            parser.add_argument(flag, type=types.get(kind, str), default=f.default, help=helps.get(f.name))


def from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
