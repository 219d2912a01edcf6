"""Helpers shared by the server tests (fixtures are in conftest.py): a server on loopback, images, content parts."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from dataclasses import replace

from PIL import Image

from internvl.serve.config import ServeConfig

MODEL_NAME = "tiny"


@contextlib.contextmanager
def running_server(model, tokenizer, **overrides):
    """A server for `model` on a free loopback port; yields (base_url, app)."""
    import uvicorn

    from internvl.serve.app import create_app
    config = replace(ServeConfig(model="unused", dtype="fp32", port=0), **overrides)
    app = create_app(model, tokenizer, config, MODEL_NAME)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)
        assert not app.state.server.worker.alive, "the engine thread outlived the server"


def png_bytes(size=(300, 100), color="blue", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):  # some structure, so tiles differ
        img.putpixel((x, (x * 3) % size[1]), (255, 255, 0))
    img.save(buf, fmt)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}
