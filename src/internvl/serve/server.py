"""`internvl serve`: load the model, build the app, run uvicorn. The CLI prints `banner()`; nothing here prints.
"""

from __future__ import annotations

import os
import socket

from ..errors import InternVLError
from .config import ServeConfig


def require_dependencies() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise InternVLError(f"internvl serve needs FastAPI and uvicorn ({e.name} is missing): "
                            "pip install 'internvl[serve]'") from None


def served_name(config: ServeConfig) -> str:
    """The model id clients use: --served-model-name, else the last part of the model path or repo id."""
    return config.served_model_name or os.path.basename(os.path.normpath(str(config.model))) or str(config.model)


def build_app(config: ServeConfig):
    """Load the model named by `config` and return (FastAPI app, served model name)."""
    require_dependencies()
    if not config.model:
        raise InternVLError("no model given: internvl serve --model DIR_OR_REPO")
    import torch

    from ..chat import from_pretrained
    from ..checkpoint.loader import LANGUAGE_PARTS, VISION_PARTS, load_model
    from ..precision import choose_plan
    from .app import create_app
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = choose_plan(device, config.dtype, config.precision)
    name = served_name(config)
    if config.role == "vision":  # the ViT and projector(s) only; no tokenizer, no LLM
        from .vision import create_vision_app
        model, _, _ = load_model(config.model, dtype=plan.weights, device=device, parts=VISION_PARTS)
        model.precision = plan
        return create_vision_app(model, config, name), name
    parts = LANGUAGE_PARTS if config.role == "language" else None
    model, tokenizer = from_pretrained(config.model, dtype=plan.weights, device=device, parts=parts)
    model.precision = plan
    if config.quantize == "int8":
        from ..quantize import quantize_int8
        quantize_int8(model)
    return create_app(model, tokenizer, config, name), name


def banner(config: ServeConfig, name: str) -> str:
    """What `internvl serve` prints at start: the URLs and a curl command to try."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    url = f"http://{host}:{config.port}"
    auth = f" \\\n  -H 'Authorization: Bearer {config.api_key}'" if config.api_key else ""
    if config.role == "vision":
        return (f"serving the vision encoder of {name} at {url}\n"
                f"  encode        POST {url}/v1/encode  (safetensors in: pixel_values; out: features, compressed)\n"
                f"  health        {url}/health   metrics {url}/metrics\n"
                f"language servers use it with: internvl serve --role language --vision-url {url}")
    image = "data:image/jpeg;base64,'\"$(base64 -w0 photo.jpg)\"'"
    body = ('{"model": "%s", "max_tokens": 64, "messages": [{"role": "user", "content": [\n'
            '    {"type": "image_url", "image_url": {"url": "%s"}},\n'
            '    {"type": "text", "text": "Describe the image."}]}]}' % (name, image))
    vision = f"  vision        {' '.join(config.vision_url)}\n" if config.role == "language" else ""
    return (f"serving {name} at {url}\n"
            f"{vision}"
            f"  chat page     {url}/\n"
            f"  OpenAI API    {url}/v1  (chat/completions, models)\n"
            f"  health        {url}/health   metrics {url}/metrics\n"
            f"try it:\n"
            f"curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'")


def check_port(host: str, port: int) -> None:
    """Refuse an address the server could not listen on (in use, not this machine's, not resolvable) with one
    clear line, before the model is loaded, instead of a traceback from uvicorn after it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise InternVLError(f"cannot listen on {host}:{port}: the host does not resolve ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a closed port in TIME_WAIT is free
        try:
            s.bind(address)
        except OSError as e:
            raise InternVLError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def run(app, config: ServeConfig) -> None:
    import uvicorn
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5)
