"""`internvl serve` as a user runs it: a subprocess that prints its URL and a curl example, enforces
--api-key, answers, and exits on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from internvl.cli import main
from internvl.serve import DEFAULT_MODEL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_defaults_to_the_shipped_tiny_model():
    from internvl.cli import build_parser
    from internvl.serve.config import from_args
    from internvl.tiny import MODEL_DIR
    assert from_args(build_parser().parse_args(["serve"])).model == DEFAULT_MODEL == str(MODEL_DIR)


def test_serve_prints_url_and_curl_and_enforces_the_api_key(tiny_ckpt):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "internvl", "serve", "--model", str(tiny_ckpt), "--port",
                             str(port), "--api-key", "s3cret", "--dtype", "fp32", "--max-batch", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # the banner comes before uvicorn starts listening
            lines.append(line)
            if "Describe the image." in line:  # the curl example's last line
                break
        banner = "".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"serving {tiny_ckpt.name} at {base}" in banner and "Authorization: Bearer s3cret" in banner
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not come up"
            time.sleep(0.1)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        denied = httpx.post(base + "/v1/chat/completions", json=body)
        assert denied.status_code == 401 and "API key" in denied.json()["error"]["message"]
        assert httpx.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.get(base + "/v1/models", headers=auth).json()["data"][0]["id"] == tiny_ckpt.name
        r = httpx.post(base + "/v1/chat/completions", json=body, headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        assert httpx.get(base + "/").status_code == 200  # the page and /health need no key
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
