"""Helpers shared by the server tests (fixtures are in conftest.py): a server on loopback, images, content parts."""

from __future__ import annotations

import base64
import contextlib
import io
import re
import struct
import threading
import time
import zlib
from dataclasses import replace

from PIL import Image

from internvl.serve.config import ServeConfig

MODEL_NAME = "tiny"


@contextlib.contextmanager
def serving(app, port: int = 0):
    """Any ASGI app under uvicorn on a loopback port (a given one, to restart a server where it was); yields
    its base URL."""
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def running_server(model, tokenizer, **overrides):
    """A server for `model` on a free loopback port; yields (base_url, app)."""
    from internvl.serve.app import create_app
    config = replace(ServeConfig(model="unused", dtype="fp32", port=0), **overrides)
    app = create_app(model, tokenizer, config, MODEL_NAME)
    with serving(app) as url:
        yield url, app
    assert not app.state.server.worker.alive, "the engine thread outlived the server"


def requests_counted(base: str, status: int) -> int:
    """The server's `internvl_requests_total` for `status`, from its /metrics (0 while there are none)."""
    import httpx
    found = re.search(rf'internvl_requests_total{{status="{status}"}} (\d+)', httpx.get(base + "/metrics").text)
    return int(found.group(1)) if found else 0


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


def png_claiming(width: int, height: int, depth: int = 8) -> bytes:
    """A few-hundred-byte PNG whose header claims width x height RGB pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def png_rgb16(width: int, height: int) -> bytes:
    """A real 16-bit-per-channel RGB PNG (Pillow reads it, but cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes((x * 7 + y) % 256 for x in range(width * 6)) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
