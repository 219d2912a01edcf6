"""The server's settings: one dataclass, and the `internvl serve` flags generated from it.

No FastAPI here, so `internvl --help` works without the `serve` extra installed.
"""

from __future__ import annotations

import argparse
import math
import os
import urllib.parse
from dataclasses import dataclass, fields

from ..argtypes import DEVICE
from ..errors import ConfigError
from ..models.flash import VIR_MODES
from ..precision import PRECISIONS
from ..runtime import DTYPES
from ..tiny import DEFAULT_MODEL  # the shipped tiny model, loaded without --model


@dataclass
class ServeConfig:
    model: str = DEFAULT_MODEL  # checkpoint directory or Hub repo id (default: the shipped tiny model)
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0 exposes the server to the network)
    port: int = 8000  # TCP port
    api_key: str | None = None  # require 'Authorization: Bearer KEY' on /v1/*
    served_model_name: str | None = None  # the id clients pass as `model` (default: the model path's last part)
    dtype: str = "auto"  # auto (as --precision picks), or one dtype for every phase: bf16, fp32
    precision: str = "auto"  # dtype per phase: auto (from the CPU, see internvl info --hardware), uniform, mixed
    device: str | None = None  # cpu or cuda (default: cuda when available)
    quantize: str = "none"  # none or int8 (weight-only, the LLM's linear layers)
    vir: str = "auto"  # InternVL3.5-Flash router: auto (as the config says), off (all tokens), always (compress all)
    max_batch: int = 8  # requests decoded together (KV-cache slots)
    max_queue: int = 64  # requests waiting beyond the running ones; more are refused with 429
    max_len: int | None = None  # tokens per request, prompt + answer (default: the model's, capped by the engine)
    prefill_budget: int = 4096  # prompt tokens prefilled in one engine step, so new prompts stall streams briefly
    vision_budget: int = 4  # image tiles encoded per engine step, for the same reason
    max_tiles: int | None = None  # most tiles per image, and the default (default: the model's max_dynamic_patch)
    default_max_tokens: int = 1024  # answer length when a request gives no max_tokens (cut to the context)
    allowed_local_media_path: str | None = None  # a directory whose files requests may name as image paths
    special_tokens_in_text: bool = False  # treat <|im_start|> etc. in request text as control tokens (the old way)
    # Limits on what one request may cost (each refusal is a 400 naming the limit).
    max_request_bytes: int = 64 * 2**20  # largest request body
    max_images: int = 16  # images per request
    max_image_bytes: int = 20 * 2**20  # largest encoded image accepted (data URI, download or file)
    max_image_pixels: int = 50_000_000  # most pixels per image, read from its header before decoding (bomb guard)
    max_image_side: int = 16_384  # longest side of an image in pixels (1 x 40,000,000 takes seconds to resample)
    max_request_pixels: int = 100_000_000  # most pixels of all the request's images together
    media_timeout: float = 10.0  # seconds to fetch one http(s) image, in all (connecting, DNS, reading)
    # Decoupled vision/language serving (DvD): `--role vision` encodes tiles for `--role language` servers.
    role: str = "all"  # all (one server), vision (the encode endpoint only) or language (images go to --vision-url)
    vision_url: tuple[str, ...] = ()  # the vision servers a language server sends image tiles to (one or more)
    vision_timeout: float = 30.0  # seconds a language server waits for one vision server's answer
    encode_batch: int = 64  # vision role: most tiles (of all waiting requests) encoded in one forward

    def __post_init__(self) -> None:
        for name in ("max_batch", "prefill_budget", "vision_budget", "default_max_tokens", "max_image_bytes",
                     "max_image_pixels", "max_image_side", "max_request_pixels", "max_request_bytes", "max_images",
                     "encode_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ConfigError(f"--max-tiles must be >= 1, got {self.max_tiles}")
        if self.max_len is not None and self.max_len < 2:
            raise ConfigError(f"--max-len must be >= 2, got {self.max_len}")
        if self.vir not in VIR_MODES:
            raise ConfigError(f"--vir must be one of {', '.join(VIR_MODES)}, got {self.vir!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.quantize not in ("none", "int8"):
            raise ConfigError(f"--quantize must be none or int8, got {self.quantize!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        if not self.host.strip():
            raise ConfigError("--host must not be empty")
        if not (math.isfinite(self.media_timeout) and self.media_timeout > 0):
            raise ConfigError(f"--media-timeout must be a number of seconds > 0, got {self.media_timeout}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key must not be empty")
        if self.dtype not in ("auto", *DTYPES):
            raise ConfigError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device is not None and not DEVICE.fullmatch(self.device):
            raise ConfigError(f"--device must be cpu, cuda, cuda:N or mps, got {self.device!r}")
        self._check_roles()
        if self.allowed_local_media_path is not None and not os.path.isdir(self.allowed_local_media_path):
            raise ConfigError(f"--allowed-local-media-path {self.allowed_local_media_path}: no such directory")

    def _check_roles(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"--role must be one of {', '.join(ROLES)}, got {self.role!r}")
        self.vision_url = tuple(u.rstrip("/") for u in self.vision_url)
        if self.role == "language" and not self.vision_url:
            raise ConfigError("--role language needs --vision-url URL [URL ...] (the vision servers to send images to)")
        if self.role != "language" and self.vision_url:
            raise ConfigError(f"--vision-url is for --role language, not --role {self.role}")
        for url in self.vision_url:
            parts = urllib.parse.urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = -1
            if parts.scheme != "http" or not parts.hostname or port == -1 or parts.query or parts.fragment:
                raise ConfigError(f"--vision-url {url!r} is not an http://HOST:PORT URL")
        if len(set(self.vision_url)) != len(self.vision_url):
            raise ConfigError("--vision-url names a server twice")
        if not (math.isfinite(self.vision_timeout) and self.vision_timeout > 0):
            raise ConfigError(f"--vision-timeout must be a number of seconds > 0, got {self.vision_timeout}")


ROLES = ("all", "vision", "language")


def _flag(name: str) -> str:
    return name.replace("_", "-")


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
        elif f.name == "vir":
            parser.add_argument(flag, choices=VIR_MODES, default=f.default, help=helps.get(f.name))
        elif f.name == "precision":
            parser.add_argument(flag, choices=PRECISIONS, default=f.default, help=helps.get(f.name))
        elif f.name == "role":
            parser.add_argument(flag, choices=ROLES, default=f.default, help=helps.get(f.name))
        elif f.name == "vision_url":
            parser.add_argument(flag, nargs="+", default=(), metavar="URL", help=helps.get(f.name))
        elif kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name))
        else:
            parser.add_argument(flag, type=types.get(kind, str), default=f.default, help=helps.get(f.name))


def from_args(args: argparse.Namespace) -> ServeConfig:
    values = {f.name: getattr(args, f.name) for f in fields(ServeConfig)}
    values["vision_url"] = tuple(values["vision_url"])
    return ServeConfig(**values)
